"""Exact 2-D → 3-D (I3D) inflation of ResNet checkpoints, any norm layer.

mmaction2's ``ResNet3d`` inflates an ImageNet ResNet into I3D when built
with ``pretrained2d=True``, but it forgives too much for a normalisation
benchmark: a norm whose 2-D entry has another shape is skipped with a
warning (its remaining parameters stay at their initial values), buffers
missing from the checkpoint are skipped silently, missing modules are only
logged, and it reaches every norm through the attribute ``bn`` (GN's is
``gn``).  Here every entry of the 3-D state dict is either derived from the
2-D checkpoint or explicitly allowed to keep its value, every 2-D entry is
used or explicitly ignored, and anything else is an error naming the keys.

Mapping, for each ``ConvModule`` of the 3-D backbone (torchvision / mmdet /
mmpretrain-backbone key layout, as mmaction2 assumes)::

    conv1.conv, conv1.<norm>                     <- conv1, <norm>1
    layerX.Y.convK.conv, layerX.Y.convK.<norm>   <- layerX.Y.convK, .<norm>K
    layerX.Y.downsample.conv, ....<norm>         <- ...downsample.0, ...1

where ``<norm>`` is the norm's attribute name (``bn`` for BN, SN and SSN;
``gn`` for GN).  A conv weight (O, I, kh, kw) becomes (O, I, kt, kh, kw)
repeated over time and divided by kt, so a clip of identical frames gives
the 2-D response away from the temporal borders.  Norm parameters and
buffers, including SN/SSN ratio logits and SSN's ``mean_fixed``,
``var_fixed`` and ``radius``, are copied as they are.

:class:`ResNet3dExactInflate` is mmaction2's ``ResNet3d`` with this
inflation (and ``zero_init_residual`` that works for any norm); importing
this module registers it in mmaction2's ``MODELS``.
"""
import fnmatch
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from mmaction.models.backbones.resnet3d import (BasicBlock3d, Bottleneck3d,
                                                ResNet3d)
from mmaction.registry import MODELS
from mmcv.cnn import ConvModule
from mmengine.logging import MMLogger
from mmengine.model.weight_init import constant_init
from mmengine.runner.checkpoint import _load_checkpoint
from torch import Tensor, nn

#: 3-D keys that may keep their values by default: BN's batch counter only
#: matters for a cumulative average and old torchvision files lack it.
DEFAULT_ALLOW_MISSING: Tuple[str, ...] = ('*.num_batches_tracked', )
#: 2-D keys unused by default: the ImageNet classifier and BN's counter.
DEFAULT_IGNORE_UNUSED: Tuple[str, ...] = ('fc.*', '*.num_batches_tracked')
#: Patterns for the switchable-norm state a BN (or SN → SSN) checkpoint
#: lacks; pass as ``allow_missing`` to start those from the layer's init.
SWITCHABLE_STATE: Tuple[str, ...] = ('*.mean_weight', '*.var_weight',
                                     '*.mean_fixed', '*.var_fixed', '*.radius')

_INFLATE, _COPY = 'inflate', 'copy'
_MAX_LISTED = 8


class InflationError(ValueError):
    """A 2-D checkpoint does not map exactly onto a 3-D backbone."""


@dataclass
class InflationReport:
    """What :func:`inflate_state_dict` did with every key.

    Attributes:
        inflated: ``(key_3d, key_2d)`` conv weights inflated over time.
        copied: ``(key_3d, key_2d)`` entries copied unchanged.
        kept: 3-D keys without a 2-D source that kept their values
            (allowed by ``allow_missing``).
        ignored: 2-D keys not used (allowed by ``ignore_unused``).
    """
    inflated: List[Tuple[str, str]] = field(default_factory=list)
    copied: List[Tuple[str, str]] = field(default_factory=list)
    kept: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line of counts, plus the kept and ignored keys."""
        text = (f'inflated {len(self.inflated)} conv weights, copied '
                f'{len(self.copied)} entries, kept {len(self.kept)} at their '
                f'initial values, ignored {len(self.ignored)} 2-D entries')
        if self.kept:
            text += '\nkept: ' + _listing(self.kept)
        if self.ignored:
            text += '\nignored: ' + _listing(self.ignored)
        return text


def _listing(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    more = len(keys) - _MAX_LISTED
    return ', '.join(
        keys[:_MAX_LISTED]) + (f' (+{more} more)' if more > 0 else '')


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _source_modules(name: str,
                    module: ConvModule) -> Optional[Tuple[str, str]]:
    """2-D (conv, norm) module names for a ConvModule, or None."""
    if name.endswith('downsample'):
        return name + '.0', name + '.1'
    prefix, _, last = name.rpartition('.')
    if not last.startswith('conv'):
        return None  # e.g. a non-local block: no 2-D counterpart
    # convK's norm is <abbr>K in the 2-D ResNet (bn1, gn2, ...).
    norm = module.norm_name + last[len('conv'):] if module.with_norm else ''
    return name, (prefix + '.' if prefix else '') + norm


def inflation_plan(model_3d: nn.Module) -> Dict[str, Tuple[str, str]]:
    """Where every 3-D state-dict entry comes from.

    Args:
        model_3d: an I3D backbone (mmaction2 ``ResNet3d`` or subclass).

    Returns:
        ``{key_3d: (key_2d, 'inflate' | 'copy')}`` for the entries with a
        2-D counterpart; the other entries of ``model_3d.state_dict()`` have
        none.
    """
    plan = {}
    for name, module in model_3d.named_modules():
        if not isinstance(module, ConvModule):
            continue
        sources = _source_modules(name, module)
        if sources is None:
            continue
        conv_2d, norm_2d = sources
        for key in module.conv.state_dict():
            how = _INFLATE if key == 'weight' else _COPY
            plan[f'{name}.conv.{key}'] = (f'{conv_2d}.{key}', how)
        if module.with_norm:
            for key in module.norm.state_dict():
                plan[f'{name}.{module.norm_name}.{key}'] = (f'{norm_2d}.{key}',
                                                            _COPY)
    return plan


def _prefix_hint(state_dict_2d: Mapping[str, Tensor], key: str) -> str:
    """A hint if ``key`` is there under a wrapper's prefix (``module.``)."""
    prefixes = {k.split('.', 1)[0] + '.' for k in state_dict_2d}
    for prefix in sorted(prefixes):
        if prefix + key in state_dict_2d:
            return (f' (the checkpoint has {prefix + key!r}: strip the '
                    f'prefix {prefix!r}, e.g. with '
                    'tools/convert_checkpoint.py)')
    return ''


def inflate_state_dict(
    state_dict_2d: Mapping[str, Tensor],
    model_3d: nn.Module,
    allow_missing: Sequence[str] = DEFAULT_ALLOW_MISSING,
    ignore_unused: Sequence[str] = DEFAULT_IGNORE_UNUSED
) -> Tuple['OrderedDict[str, Tensor]', InflationReport]:
    """Inflate a 2-D ResNet state dict into a complete 3-D one.

    Pure: neither argument is modified.  Every entry of
    ``model_3d.state_dict()`` is in the result, with its dtype and device.

    Args:
        state_dict_2d: a 2-D ResNet state dict in the torchvision / mmdet
            layout (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``,
            ``layer1.0.downsample.1.*``, ...), any norm.
        model_3d: the I3D backbone to inflate into.
        allow_missing: fnmatch patterns of 3-D keys that may lack a 2-D
            source and then keep ``model_3d``'s current value, e.g.
            :data:`SWITCHABLE_STATE` to start SN/SSN ratios from their
            initial values when inflating a BN checkpoint.
        ignore_unused: fnmatch patterns of 2-D keys that may go unused.

    Returns:
        The 3-D state dict and a report of what happened to each key.

    Raises:
        InflationError: listing, all at once, 3-D entries without a 2-D
            source, entries whose shapes disagree, and unused 2-D entries
            not covered by ``ignore_unused``.
    """
    plan = inflation_plan(model_3d)
    target = model_3d.state_dict()
    result: 'OrderedDict[str, Tensor]' = OrderedDict()
    report = InflationReport()
    missing, mismatched, used = [], [], set()
    for key, value in target.items():
        source, how = plan.get(key, (None, None))
        if source is None or source not in state_dict_2d:
            if _matches(key, allow_missing):
                result[key] = value.detach().clone()
                report.kept.append(key)
            else:
                hint = _prefix_hint(state_dict_2d, source) if source else ''
                source = source or '(no 2-D counterpart)'
                missing.append(f'{key} <- {source}{hint}')
            continue
        weight_2d = state_dict_2d[source]
        used.add(source)
        if how == _INFLATE:
            kernel_t = value.shape[2] if value.dim() == 5 else None
            expected = value.shape[:2] + value.shape[3:]
            if kernel_t is None or weight_2d.shape != expected:
                mismatched.append(f'{key} {tuple(value.shape)} <- {source} '
                                  f'{tuple(weight_2d.shape)}')
                continue
            inflated = weight_2d.unsqueeze(2).expand_as(value) / kernel_t
            result[key] = inflated.to(value).contiguous()
            report.inflated.append((key, source))
        else:
            if weight_2d.shape != value.shape:
                mismatched.append(f'{key} {tuple(value.shape)} <- {source} '
                                  f'{tuple(weight_2d.shape)}')
                continue
            result[key] = weight_2d.detach().to(value).clone()
            report.copied.append((key, source))
    unused = []
    for key in state_dict_2d:
        if key in used:
            continue
        if _matches(key, ignore_unused):
            report.ignored.append(key)
        else:
            unused.append(key)
    problems = []
    found = {
        '3-D entries without a 2-D source': missing,
        'shape mismatches': mismatched,
        'unused 2-D entries': unused
    }
    for title, keys in found.items():
        if keys:
            problems.append(f'{len(keys)} {title}: ' +
                            '; '.join(keys[:_MAX_LISTED]) +
                            (' ...' if len(keys) > _MAX_LISTED else ''))
    if problems:
        raise InflationError(
            'the 2-D checkpoint does not inflate exactly into '
            f'{type(model_3d).__name__}: ' + ' | '.join(problems) +
            '. Convert the checkpoint to the matching norm and key layout '
            '(tools/convert_checkpoint.py), or list keys that may keep their '
            'initial values in allow_missing (e.g. SWITCHABLE_STATE for a '
            'BN checkpoint) and unused 2-D keys in ignore_unused.')
    return result, report


def load_inflated(
        model_3d: nn.Module,
        state_dict_2d: Mapping[str, Tensor],
        allow_missing: Sequence[str] = DEFAULT_ALLOW_MISSING,
        ignore_unused: Sequence[str] = DEFAULT_IGNORE_UNUSED
) -> InflationReport:
    """:func:`inflate_state_dict` and load the result strictly in place."""
    state_dict_3d, report = inflate_state_dict(state_dict_2d, model_3d,
                                               allow_missing, ignore_unused)
    model_3d.load_state_dict(state_dict_3d, strict=True)
    return report


def load_state_dict_2d(filename: str) -> 'OrderedDict[str, Tensor]':
    """State dict of a checkpoint file or URL (``state_dict`` if nested)."""
    checkpoint = _load_checkpoint(filename, map_location='cpu')
    if isinstance(checkpoint, Mapping) and 'state_dict' in checkpoint:
        checkpoint = checkpoint['state_dict']
    if not isinstance(checkpoint, Mapping) or not all(
            isinstance(v, Tensor) for v in checkpoint.values()):
        raise InflationError(
            f'{filename} holds no state dict of tensors (got '
            f'{type(checkpoint).__name__}); expected a ResNet checkpoint')
    return OrderedDict(checkpoint)


@MODELS.register_module()
class ResNet3dExactInflate(ResNet3d):
    """mmaction2's ``ResNet3d`` with exact ImageNet inflation, any norm.

    Identical to ``ResNet3d`` except that

    * with ``pretrained`` and ``pretrained2d=True`` it inflates with
      :func:`load_inflated`: it raises :class:`InflationError` instead of
      leaving parameters at their initial values;
    * ``zero_init_residual`` reaches the norm through ``ConvModule.norm``,
      so GN (attribute ``gn``) works as well as BN/SN/SSN (``bn``).

    Args:
        inflate_allow_missing: ``allow_missing`` of :func:`load_inflated`.
        inflate_ignore_unused: ``ignore_unused`` of :func:`load_inflated`.
        Other arguments as ``ResNet3d``.
    """

    def __init__(self,
                 *args,
                 inflate_allow_missing: Sequence[str] = DEFAULT_ALLOW_MISSING,
                 inflate_ignore_unused: Sequence[str] = DEFAULT_IGNORE_UNUSED,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.inflate_allow_missing = tuple(inflate_allow_missing)
        self.inflate_ignore_unused = tuple(inflate_ignore_unused)

    def inflate_weights(self, logger: MMLogger) -> None:
        """Inflate ``self.pretrained`` exactly; log what was done."""
        report = load_inflated(self, load_state_dict_2d(self.pretrained),
                               self.inflate_allow_missing,
                               self.inflate_ignore_unused)
        logger.info(f'inflated {self.pretrained}: {report.summary()}')

    def init_weights(self, pretrained: Optional[str] = None) -> None:
        """As ``ResNet3d.init_weights``; zero-init reaches any norm."""
        zero_init_residual = self.zero_init_residual
        self.zero_init_residual = False  # upstream would use ``.bn``
        try:
            super().init_weights(pretrained)
        finally:
            self.zero_init_residual = zero_init_residual
        if self.pretrained is None and zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck3d):
                    constant_init(module.conv3.norm, 0)
                elif isinstance(module, BasicBlock3d):
                    constant_init(module.conv2.norm, 0)


__all__ = [
    'DEFAULT_ALLOW_MISSING', 'DEFAULT_IGNORE_UNUSED', 'InflationError',
    'InflationReport', 'ResNet3dExactInflate', 'SWITCHABLE_STATE',
    'inflate_state_dict', 'inflation_plan', 'load_inflated',
    'load_state_dict_2d'
]
