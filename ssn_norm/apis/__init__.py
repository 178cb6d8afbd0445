from .batch_stats import update_checkpoint_batch_stats
from .deploy import build_model, deploy_checkpoint, load_deployed
from .launch import (RUN_INFO, add_common_args, apply_test_outputs,
                     apply_train_options, apply_tta, build_runner,
                     close_distributed, load_config, parse_tool_args,
                     setup_cpu_distributed, toolbox_of, write_run_info)

__all__ = [
    'RUN_INFO', 'add_common_args', 'apply_test_outputs', 'apply_train_options',
    'apply_tta', 'build_model', 'build_runner', 'close_distributed',
    'deploy_checkpoint', 'load_config', 'load_deployed', 'parse_tool_args',
    'setup_cpu_distributed', 'toolbox_of', 'update_checkpoint_batch_stats',
    'write_run_info'
]
