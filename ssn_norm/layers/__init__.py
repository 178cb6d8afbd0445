from .switchable_norm import (NORMALIZERS, SN, SSN, MomentRecorder,
                              SwitchableNormBase, max_radius)
from .sync_switchable_norm import SyncSN, SyncSSN

__all__ = [
    'NORMALIZERS', 'MomentRecorder', 'SN', 'SSN', 'SwitchableNormBase',
    'SyncSN', 'SyncSSN', 'max_radius'
]
