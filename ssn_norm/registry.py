"""Registration glue: makes the layers, hooks and wrappers buildable by name.

The layers go into mmengine's **root** ``MODELS`` registry, where mmcv keeps
BN/GN/SyncBN, so ``build_norm_layer(dict(type='SN'), C)`` finds them from the
mmdet, mmseg and mmaction scopes alike.

:func:`unknown_norm_message` is the error mmcv's ``build_norm_layer`` raises
for an unknown type once :mod:`ssn_norm.compat` (workaround 6) has replaced
mmcv's ``Cannot find None in registry`` with it.
"""
import difflib
from typing import List

from torch import nn

from .layers import SN, SSN, SyncSN, SyncSSN
from .layers.switchable_norm import SwitchableNormBase

NORM_LAYERS = {'SN': SN, 'SSN': SSN, 'SyncSN': SyncSN, 'SyncSSN': SyncSSN}

_NORM_BASES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
               SwitchableNormBase)


def _is_norm(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, _NORM_BASES)


def known_norm_types(registry) -> List[str]:
    """Names of norm layers visible from ``registry`` (it and its parents),
    ssn_norm's always included."""
    names = set(NORM_LAYERS)
    while registry is not None:
        names.update(name for name, obj in registry.module_dict.items()
                     if _is_norm(obj))
        registry = registry.parent
    return sorted(names, key=str.lower)


def unknown_norm_message(norm_type: str, registry=None) -> str:
    """Error text for a norm type ``registry`` does not know.

    Names the type, the (at most two) closest known norm types (difflib
    ratio ≥ 0.6, ignoring case) and every known one.
    """
    known = known_norm_types(registry)
    scores = {
        name: difflib.SequenceMatcher(None, norm_type.lower(),
                                      name.lower()).ratio()
        for name in known
    }
    # The two closest; on a tie ours first (this is their error message).
    close = sorted((name for name, score in scores.items() if score >= 0.6),
                   key=lambda name:
                   (-scores[name], name not in NORM_LAYERS, name))[:2]
    scope = '' if registry is None else f' (scope {registry.scope!r})'
    hint = (f'; did you mean {" or ".join(map(repr, close))}?'
            if close else '.')
    return (f'unknown norm type {norm_type!r}{scope}{hint} Known norm '
            f'types: {", ".join(known)}.')


def register_all() -> None:
    """Register everything; idempotent (re-registering replaces)."""
    from mmengine.registry import MODELS
    for name, cls in NORM_LAYERS.items():
        MODELS.register_module(name=name, module=cls, force=True)
    # These modules register themselves with mmengine when imported.
    from . import hooks, optim  # noqa: F401
