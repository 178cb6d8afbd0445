"""Which normalisation layers a built model holds, part by part.

Counted from the built modules, not from the config text: a config can
name a norm that nothing builds (a top-level ``norm_cfg`` an inherited
model never reads) and a class can build one the config never names (a
default ``norm_cfg``).  :func:`ssn_norm.apis.swap_norm` and the tools'
checks (:mod:`ssn_norm.apis.checks`) both report through this module.
"""
from collections import Counter
from typing import Dict, Iterator, Tuple

from torch import nn

from ..layers import SwitchableNormBase
from ..utils import unwrap_model

#: What counts as a normalisation layer: torch's BN and IN family (and
#: mmcv's SyncBN, a ``_BatchNorm``), GN, LN and the switchable layers
#: (which deliberately do not subclass ``_BatchNorm``).
NORM_LAYER_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
                    SwitchableNormBase)
#: The part name of a layer attached to the model itself.
ROOT_PART = '(model)'


def norm_layers(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """Every normalisation layer of ``model`` (unwrapped from DDP), with
    its module path, in module order."""
    for name, module in unwrap_model(model).named_modules():
        if isinstance(module, NORM_LAYER_TYPES):
            yield name, module


def part_of(name: str) -> str:
    """The top-level part a module path belongs to: ``backbone`` for
    ``backbone.layer1.0.bn1``; :data:`ROOT_PART` for a direct child."""
    head, dot, _ = name.partition('.')
    return head if dot else ROOT_PART


def is_trainable(module: nn.Module) -> bool:
    """Whether every parameter of ``module`` requires a gradient (a layer
    without parameters counts as trainable)."""
    return all(p.requires_grad for p in module.parameters())


def count_norms(model: nn.Module) -> Dict[str, Counter]:
    """``{part: Counter({class name: count})}`` of :func:`norm_layers`;
    frozen layers (a parameter without gradient) are counted under
    ``'<class> (frozen)'``; parts in module order."""
    counts: Dict[str, Counter] = {}
    for name, module in norm_layers(model):
        kind = type(module).__name__
        if not is_trainable(module):
            kind += ' (frozen)'
        counts.setdefault(part_of(name), Counter())[kind] += 1
    return counts


def format_counts(counts: Counter) -> str:
    """``'42 BatchNorm2d, 11 BatchNorm2d (frozen)'``; ``'none'`` if
    empty."""
    if not counts:
        return 'none'
    return ', '.join(f'{n} {kind}' for kind, n in counts.items())


def census_table(before: Dict[str, Counter], after: Dict[str, Counter]) -> str:
    """One line per part: ``part  <before> -> <after>``, aligned."""
    parts = list(dict.fromkeys([*before, *after]))
    if not parts:
        return '  (no norm layer before or after)'
    width = max(len(part) for part in parts)
    return '\n'.join(f'  {part:<{width}}  '
                     f'{format_counts(before.get(part, Counter()))} -> '
                     f'{format_counts(after.get(part, Counter()))}'
                     for part in parts)
