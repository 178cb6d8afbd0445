"""Registration glue: makes the layers, hooks and wrappers buildable by name.

The layers go into mmengine's **root** ``MODELS`` registry, where mmcv keeps
BN/GN/SyncBN, so ``build_norm_layer(dict(type='SN'), C)`` finds them from the
mmdet, mmseg and mmaction scopes alike.

Workaround (mmcv 2.1.0): for an unknown type, mmcv's ``build_norm_layer``
raises ``KeyError: Cannot find None in registry under scope name mmseg``,
naming neither the type nor the valid ones.  The lookup it makes cannot be
reached from a registry (a scope's registry reads its parents' tables
directly), and every toolbox binds the function itself at import, so
:func:`register_all` replaces the ``MODELS`` name *inside*
``mmcv.cnn.bricks.norm`` with :class:`_NormLookup`: the same registry,
whose scoped ``get`` raises :func:`unknown_norm_message` instead of
returning None.  Only ``build_norm_layer``'s lookup is affected, and only
on a miss.
"""
import contextlib
import difflib
import importlib.util
from typing import Iterator, List, Optional

from torch import nn

from .layers import SN, SSN, SyncSN, SyncSSN
from .layers.switchable_norm import _SwitchableNormBase

NORM_LAYERS = {'SN': SN, 'SSN': SSN, 'SyncSN': SyncSN, 'SyncSSN': SyncSSN}

_NORM_BASES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
               _SwitchableNormBase)


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


class _CheckedGet:
    """A registry whose ``get`` raises for an unknown norm type."""

    def __init__(self, registry) -> None:
        self._registry = registry

    def __getattr__(self, name: str):
        return getattr(self._registry, name)

    def get(self, key):
        found = self._registry.get(key)
        if found is None and isinstance(key, str):
            raise KeyError(unknown_norm_message(key, self._registry))
        return found


class _NormLookup:
    """mmengine's root ``MODELS`` as seen by mmcv's ``build_norm_layer``."""

    def __init__(self, registry) -> None:
        self._registry = registry

    def __getattr__(self, name: str):
        return getattr(self._registry, name)

    @contextlib.contextmanager
    def switch_scope_and_registry(self,
                                  scope: Optional[str]) -> Iterator[object]:
        with self._registry.switch_scope_and_registry(scope) as registry:
            yield _CheckedGet(registry)


def _patch_build_norm_layer_errors() -> None:
    if importlib.util.find_spec('mmcv') is None:
        return
    from mmcv.cnn.bricks import norm
    if not isinstance(norm.MODELS, _NormLookup):
        norm.MODELS = _NormLookup(norm.MODELS)


def register_all() -> None:
    """Register everything; idempotent (re-registering replaces)."""
    from mmengine.registry import MODELS
    for name, cls in NORM_LAYERS.items():
        MODELS.register_module(name=name, module=cls, force=True)
    _patch_build_norm_layer_errors()
    # These modules register themselves with mmengine when imported.
    from . import hooks, optim  # noqa: F401
