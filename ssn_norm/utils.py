"""Small helpers shared by hooks and tools."""
from typing import Iterator, Tuple

from torch import nn

from .layers.switchable_norm import SSN, SwitchableNormBase


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel-style wrapper."""
    return getattr(model, 'module', model)


def switchable_norms(
        model: nn.Module) -> Iterator[Tuple[str, SwitchableNormBase]]:
    """Every SN / SSN / SyncSN / SyncSSN layer of ``model``, with its name."""
    for name, module in unwrap_model(model).named_modules():
        if isinstance(module, SwitchableNormBase):
            yield name, module


def sparse_switchable_norms(model: nn.Module) -> Iterator[Tuple[str, SSN]]:
    """Every SSN / SyncSSN layer of ``model``, with its name."""
    for name, module in switchable_norms(model):
        if isinstance(module, SSN):
            yield name, module
