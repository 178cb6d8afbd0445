"""Switchable Normalization, Sparse Switchable Normalization and their
synchronised forms, as OpenMMLab norm layers.

The layers are pure PyTorch.  With mmengine installed, importing this package
also registers them (``norm_cfg=dict(type='SN' | 'SSN' | 'SyncSN' |
'SyncSSN')``), its hooks and optimizer wrappers, and applies the workarounds
in :mod:`ssn_norm.compat`.
"""
import importlib.util

from .layers import NORMALIZERS, SN, SSN, SyncSN, SyncSSN, max_radius
from .ops import is_one_hot, sparsemax, sparsestmax
from .version import __version__

__all__ = [
    '__version__', 'NORMALIZERS', 'SN', 'SSN', 'SyncSN', 'SyncSSN',
    'is_one_hot', 'max_radius', 'sparsemax', 'sparsestmax'
]

if importlib.util.find_spec('mmengine') is not None:
    from . import compat, registry
    compat.apply_all()
    registry.register_all()
