from .switchable_norm import NORMALIZERS, SN, SSN, max_radius
from .sync_switchable_norm import SyncSN, SyncSSN

__all__ = ['NORMALIZERS', 'SN', 'SSN', 'SyncSN', 'SyncSSN', 'max_radius']
