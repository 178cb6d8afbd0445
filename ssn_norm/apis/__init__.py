from .launch import (add_common_args, apply_test_outputs, apply_train_options,
                     build_runner, load_config, parse_tool_args,
                     setup_cpu_distributed, toolbox_of)

__all__ = [
    'add_common_args', 'apply_test_outputs', 'apply_train_options',
    'build_runner', 'load_config', 'parse_tool_args', 'setup_cpu_distributed',
    'toolbox_of'
]
