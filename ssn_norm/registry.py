"""Registration glue: makes the layers, hooks and wrappers buildable by name.

The layers go into mmengine's **root** ``MODELS`` registry, where mmcv keeps
BN/GN/SyncBN, so ``build_norm_layer(dict(type='SN'), C)`` finds them from the
mmdet, mmseg and mmaction scopes alike.
"""
from .layers import SN, SSN, SyncSN, SyncSSN

NORM_LAYERS = {'SN': SN, 'SSN': SSN, 'SyncSN': SyncSN, 'SyncSSN': SyncSSN}


def register_all() -> None:
    """Register everything; idempotent (re-registering replaces)."""
    from mmengine.registry import MODELS
    for name, cls in NORM_LAYERS.items():
        MODELS.register_module(name=name, module=cls, force=True)
    # These modules register themselves with mmengine when imported.
    from . import hooks, optim  # noqa: F401
