from .batch_stats import update_checkpoint_batch_stats
from .deploy import (OutputCheck, build_model, dataset_meta, deploy_checkpoint,
                     deployed_inferencer, deployment_summary, load_deployed)
from .launch import (RUN_INFO, add_common_args, apply_test_outputs,
                     apply_train_options, apply_tta, build_runner,
                     close_distributed, load_config, parse_tool_args,
                     resolve_config, setup_cpu_distributed, toolbox_of,
                     write_run_info)
from .norms import count_norms, norm_layers
from .swap import SWAP_NORMS, SwapError, SwapResult, swap_norm

__all__ = [
    'OutputCheck', 'RUN_INFO', 'SWAP_NORMS', 'SwapError', 'SwapResult',
    'add_common_args', 'apply_test_outputs', 'apply_train_options',
    'apply_tta', 'build_model', 'build_runner', 'close_distributed',
    'count_norms', 'dataset_meta', 'deploy_checkpoint', 'deployed_inferencer',
    'deployment_summary', 'load_config', 'load_deployed', 'norm_layers',
    'parse_tool_args', 'resolve_config', 'setup_cpu_distributed', 'swap_norm',
    'toolbox_of', 'update_checkpoint_batch_stats', 'write_run_info'
]
