from .launch import (RUN_INFO, add_common_args, apply_test_outputs,
                     apply_train_options, apply_tta, build_runner, load_config,
                     parse_tool_args, setup_cpu_distributed, toolbox_of,
                     write_run_info)

__all__ = [
    'RUN_INFO', 'add_common_args', 'apply_test_outputs', 'apply_train_options',
    'apply_tta', 'build_runner', 'load_config', 'parse_tool_args',
    'setup_cpu_distributed', 'toolbox_of', 'write_run_info'
]
