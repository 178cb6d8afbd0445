from .batch_stats_hook import BatchStatsHook
from .ratio_logger_hook import RatioLoggerHook
from .rng_state_hook import RngStateHook
from .sparsestmax_radius_hook import SparsestMaxRadiusHook
from .sync_norm_stats_hook import SyncNormStatsHook

__all__ = [
    'BatchStatsHook', 'RatioLoggerHook', 'RngStateHook',
    'SparsestMaxRadiusHook', 'SyncNormStatsHook'
]
