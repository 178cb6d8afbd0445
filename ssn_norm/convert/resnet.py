"""ImageNet ResNet checkpoints → this project's SN / SSN ResNet key layout.

The target is the state dict of mmdet / mmseg ``ResNet`` built with
``norm_cfg=dict(type='SN' | 'SSN')`` (mmpretrain's and torchvision's
layout too)::

    conv1, bn1                                  7×7 stem (``deep_stem=False``)
    stem.{0,3,6} (convs), stem.{1,4,7} (norms)  3×3 deep stem (ResNetV1c/d)
    layerX.i.conv{1,2,3}, layerX.i.bn{1,2,3}
    layerX.0.downsample.{0,1}                   ({1,2} with ``avg_down``)

Every norm holds ``weight``, ``bias`` (C,), the ratio logits ``mean_weight``
and ``var_weight`` (3,) in the order IN, LN, BN, and ``running_mean``,
``running_var`` (C,); SSN adds ``mean_fixed``, ``var_fixed`` (long, (1,))
and ``radius`` ((1,)).  For group SN (``num_groups=G``, ``groups=G`` here)
the logits are (G, 3), each group starting from the layer's logits, and
SSN's flags (G,).

Sources, detected from the keys (:func:`detect_format`):

* ``released-sn`` / ``released-ssn``: the SN / SSN authors' ImageNet
  ResNet v1 checkpoints (``resnet_v1_sn.py`` / ``resnet_v1_ssn.py``), usually
  under a ``module.`` prefix: norms ``sn1`` and ``layerX.i.sn{1,2,3}``,
  ``weight``/``bias`` shaped (1, C, 1, 1) and running statistics (1, C, 1).
  The stride sits on the 3×3 conv, as in mmdet's ``style='pytorch'``;
* ``ssn-norm``: a checkpoint already in the target layout (one written by
  this converter, or an SN/SSN classifier trained with mmpretrain and this
  plugin, ``backbone.`` prefix); it is validated and passed through;
* ``bn``: BN ResNets from torchvision, mmpretrain (``backbone.`` prefix,
  deep stems as ``stem.i.conv`` / ``stem.i.bn``) or OpenMMLab's
  ``open-mmlab://`` files.  BN affine parameters and running statistics
  are copied; the ratio logits start at their initial value (1, uniform
  ratios), so the features are an SN initialisation, not the BN model's.

Nothing is guessed: a key that is neither mapped nor a known classifier
entry (``fc``, ``head.fc``; dropped and reported) is an error naming it,
and so is an incomplete norm, a bad shape or a block structure that is no
ResNet depth.
"""
import re
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

#: Detected source formats.
RELEASED_SN = 'released-sn'
RELEASED_SSN = 'released-ssn'
SSN_NORM = 'ssn-norm'
BN = 'bn'
FORMATS = (RELEASED_SN, RELEASED_SSN, SSN_NORM, BN)
#: Conversion targets.
TARGETS = ('sn', 'ssn')

#: Block counts per stage of each ResNet depth (mmdet's ``arch_settings``).
DEPTHS = {
    ('basic', (2, 2, 2, 2)): 18,
    ('basic', (3, 4, 6, 3)): 34,
    ('bottleneck', (3, 4, 6, 3)): 50,
    ('bottleneck', (3, 4, 23, 3)): 101,
    ('bottleneck', (3, 8, 36, 3)): 152,
}

_SN_PARAMS = ('weight', 'bias', 'mean_weight', 'var_weight')
_BN_STATS = ('running_mean', 'running_var')
_SSN_BUFFERS = ('mean_fixed', 'var_fixed', 'radius')
_BN_KEYS = ('weight', 'bias', 'running_mean', 'running_var',
            'num_batches_tracked')
#: Modules of the target backbone (after renaming), by kind.
_TARGET_MODULE = re.compile(r'^(?:conv1|bn1|stem\.\d+|layer[1-4]\.\d+\.'
                            r'(?:conv[1-3]|bn[1-3]|downsample\.\d+))$')
#: Classifier modules of the sources; dropped.
_CLASSIFIERS = ('fc', 'head.fc')
_MAX_LISTED = 8


class ConversionError(ValueError):
    """A checkpoint that cannot be mapped exactly onto the target layout."""


@dataclass
class ConversionReport:
    """What a conversion did.

    Attributes:
        source_format: one of :data:`FORMATS`.
        source_flavour: the key layout: ``mmpretrain`` (``backbone.``
            prefix), else for BN ``torchvision`` or ``openmmlab`` (deep
            stem), for SN/SSN the format.
        target: ``'SN'`` or ``'SSN'``.
        arch: e.g. ``'ResNet-50 (Bottleneck, 7x7 stem)'``.
        depth: the ResNet depth.
        deep_stem: whether the stem is the 3×3 deep stem.
        num_convs: conv weights copied.
        num_norms: norm layers written.
        renamed: ``(source, target)`` module paths whose name changed.
        dropped: ``(key, reason)`` source entries not written.
        initialised: target keys with no source value, set to the layer's
            initial value.
        notes: anything the user must know to use the result.
    """
    source_format: str
    source_flavour: str
    target: str
    arch: str = ''
    depth: int = 0
    deep_stem: bool = False
    num_convs: int = 0
    num_norms: int = 0
    renamed: List[Tuple[str, str]] = field(default_factory=list)
    dropped: List[Tuple[str, str]] = field(default_factory=list)
    initialised: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable multi-line summary (what the tool prints)."""
        lines = [
            f'source: {self.source_flavour} ({self.source_format}), '
            f'{self.arch}',
            f'target: {self.target} ResNet-{self.depth} layout: '
            f'{self.num_convs} conv weights, {self.num_norms} norm layers',
        ]
        if self.renamed:
            pairs = [f'{s} -> {t}' for s, t in self.renamed]
            lines.append(f'renamed {len(pairs)} modules: {_listing(pairs)}')
        if self.initialised:
            lines.append('initialised at the layer defaults: ' +
                         _by_entry(self.initialised))
        if self.dropped:
            by_reason = defaultdict(list)
            for key, reason in self.dropped:
                by_reason[reason].append(key)
            for reason, keys in by_reason.items():
                lines.append(f'dropped ({reason}): {_by_entry(keys)}')
        lines += [f'note: {note}' for note in self.notes]
        return '\n'.join(lines)


def _by_entry(keys: List[str]) -> str:
    """'fc.weight, fc.bias' or 'mean_weight (53 layers), ...'."""
    if len(keys) <= 4:
        return ', '.join(keys)
    counts = defaultdict(int)
    for key in keys:
        counts[key.rpartition('.')[2]] += 1
    return ', '.join(f'{name} ({count} layers)'
                     for name, count in counts.items())


def _listing(items: List[str]) -> str:
    shown = ', '.join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f', ... ({more} more)' if more > 0 else '')


# --------------------------------------------------------------- loading
def extract_state_dict(checkpoint: object) -> 'OrderedDict[str, Tensor]':
    """The tensor state dict inside a loaded checkpoint.

    Accepts ``{'state_dict': sd, ...}``, ``{'model': sd, ...}`` or a bare
    state dict; strips a ``module.`` prefix carried by every key (from
    (Distributed)DataParallel).  Raises :class:`ConversionError` for anything
    else, naming what was found.
    """
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(
            f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    state_dict = checkpoint
    for wrapper in ('state_dict', 'model'):
        if isinstance(checkpoint.get(wrapper), Mapping):
            state_dict = checkpoint[wrapper]
            break
    if not state_dict:
        raise ConversionError('the checkpoint holds an empty state dict')
    not_tensors = [
        k for k, v in state_dict.items()
        if not isinstance(k, str) or not isinstance(v, Tensor)
    ]
    if not_tensors:
        keys = [repr(k) for k in not_tensors]
        raise ConversionError(
            'not a state dict of tensors: no "state_dict" entry, and '
            f'{len(keys)} entries are not named tensors: {_listing(keys)}')
    prefixed = [k.startswith('module.') for k in state_dict]
    if any(prefixed) and not all(prefixed):
        odd = [k for k in state_dict if not k.startswith('module.')]
        raise ConversionError(
            'some keys carry the "module." prefix and some do not '
            f'(e.g. {_listing(odd)}); cannot tell which model they belong to')
    if all(prefixed):
        return OrderedDict(
            (k[len('module.'):], v) for k, v in state_dict.items())
    return OrderedDict(state_dict)


def detect_format(state_dict: Mapping[str, Tensor]) -> str:
    """One of :data:`FORMATS` for a prefix-free state dict.

    Raises :class:`ConversionError` when the keys look like no ResNet with
    BN, SN or SSN layers.
    """
    names = {k.rsplit('.', 1)[-1] for k in state_dict}
    modules = {k.rsplit('.', 1)[0] for k in state_dict if '.' in k}
    if 'mean_weight' in names:
        if any(re.search(r'(^|\.)sn\d$', m) for m in modules):
            return RELEASED_SSN if 'mean_fixed' in names else RELEASED_SN
        return SSN_NORM
    if 'running_mean' in names:
        return BN
    first = _listing(list(state_dict))
    raise ConversionError(
        'not a ResNet checkpoint with BN, SN or SSN layers: no '
        f'"running_mean" or "mean_weight" entry among its keys ({first})')


# ----------------------------------------------------------- conversion
def _rename_module(path: str, source_format: str, flavour: str) -> str:
    if source_format in (RELEASED_SN, RELEASED_SSN):
        return re.sub(r'(^|\.)sn(\d)$', r'\1bn\2', path)
    if flavour == 'mmpretrain':
        match = re.fullmatch(r'stem\.(\d+)\.(conv|bn)', path)
        if match:
            # ConvModule i (conv, norm, act) -> Sequential slots 3i, 3i + 1.
            index = 3 * int(match.group(1)) + (match.group(2) == 'bn')
            return f'stem.{index}'
    return path


def _norm_vector(key: str, value: Tensor) -> Tensor:
    """(C,), (1, C, 1[, 1]) → (C,); anything else is an error."""
    shape = tuple(value.shape)
    if len(shape) == 1 or (len(shape) >= 2 and shape[0] == 1
                           and all(s == 1 for s in shape[2:])):
        return value.reshape(-1).clone()
    raise ConversionError(
        f'{key}: expected a per-channel vector shaped (C,), (1, C, 1) or '
        f'(1, C, 1, 1), got {tuple(value.shape)}')


def _convert_norm(source: str, entries: Dict[str, Tensor], source_format: str,
                  ssn_source: bool, to_ssn: bool, report: ConversionReport,
                  target: str) -> 'OrderedDict[str, Tensor]':
    from_bn = source_format == BN
    if from_bn:
        required = _BN_KEYS[:4]
        allowed = _BN_KEYS
    else:
        required = _SN_PARAMS
        allowed = _SN_PARAMS + _BN_STATS + _SSN_BUFFERS
    unknown = sorted(set(entries) - set(allowed))
    if unknown:
        raise ConversionError(
            f'{source}: unexpected norm entries '
            f'{[f"{source}.{n}" for n in unknown]}; a '
            f'{"BN" if from_bn else "SN/SSN"} layer holds {list(allowed)}')
    missing = [n for n in required if n not in entries]
    if not from_bn:
        if 'mean_weight' not in entries or entries['mean_weight'].numel() == 3:
            missing += [n for n in _BN_STATS if n not in entries]
        if ssn_source:
            missing += [n for n in _SSN_BUFFERS if n not in entries]
    if missing:
        raise ConversionError(f'{source}: incomplete norm layer, missing '
                              f'{[f"{source}.{n}" for n in missing]}')

    out = OrderedDict()
    channels = _norm_vector(f'{source}.weight', entries['weight']).numel()
    for name in ('weight', 'bias') + _BN_STATS:
        if name in entries:
            value = _norm_vector(f'{source}.{name}', entries[name])
            if value.numel() != channels:
                raise ConversionError(
                    f'{source}.{name} has {value.numel()} channels, '
                    f'{source}.weight has {channels}')
            out[name] = value
    if 'num_batches_tracked' in entries:
        report.dropped.append(
            (f'{source}.num_batches_tracked', 'BN batch counter, SN has none'))
    if from_bn:
        for name in ('mean_weight', 'var_weight'):
            out[name] = torch.ones(3, dtype=out['weight'].dtype)
            report.initialised.append(f'{target}.{name}')
    else:
        # (G, K): a group SN checkpoint of this project, kept as it is.
        grouped = source_format == SSN_NORM and entries['mean_weight'].dim(
        ) == 2
        for name in ('mean_weight', 'var_weight'):
            logits = entries[name]
            wrong = (
                logits.dim() != 2 if grouped else logits.numel() not in (2, 3))
            if wrong or logits.shape[-1] not in (2, 3):
                raise ConversionError(
                    f'{source}.{name}: expected 3 ratio logits (IN, LN, BN) '
                    f'or 2 (IN, LN) (per channel group: (G, 3) / (G, 2)), '
                    f'got shape {tuple(logits.shape)}')
            out[name] = (logits if grouped else logits.reshape(-1)).clone()
        if out['mean_weight'].shape != out['var_weight'].shape:
            raise ConversionError(
                f'{source}: mean_weight has shape '
                f'{tuple(out["mean_weight"].shape)}, var_weight '
                f'{tuple(out["var_weight"].shape)}')
    if to_ssn and ssn_source:
        rows = out['mean_weight'].shape[:-1].numel()
        for name in ('mean_fixed', 'var_fixed'):
            out[name] = entries[name].reshape(rows).to(torch.long).clone()
        out['radius'] = entries['radius'].reshape(1).clone()
    elif to_ssn:
        rows = out['mean_weight'].shape[:-1].numel()
        out['mean_fixed'] = torch.zeros(rows, dtype=torch.long)
        out['var_fixed'] = torch.zeros(rows, dtype=torch.long)
        out['radius'] = torch.zeros(1, dtype=out['weight'].dtype)
        report.initialised += [f'{target}.{n}' for n in _SSN_BUFFERS]
    # Order as the layer's own state dict (parameters, then buffers).
    order = _SN_PARAMS + _BN_STATS + _SSN_BUFFERS
    return OrderedDict((n, out[n]) for n in order if n in out)


def _group_modules(
        state_dict: Mapping[str,
                            Tensor]) -> 'OrderedDict[str, Dict[str, Tensor]]':
    groups = OrderedDict()
    for key, value in state_dict.items():
        module, _, name = key.rpartition('.')
        groups.setdefault(module, {})[name] = value
    return groups


def _check_architecture(modules: Mapping[str, str],
                        report: ConversionReport) -> None:
    """Checks the converted modules form a complete ResNet; sets depth."""
    deep = any(m.startswith('stem.') for m in modules)
    plain = any(m in ('conv1', 'bn1') for m in modules)
    if deep and plain:
        raise ConversionError(
            'the checkpoint has both a 7x7 stem (conv1/bn1) and a deep stem '
            '(stem.*); it is no single ResNet')
    if deep:
        stem = {
            'stem.0': 'conv',
            'stem.1': 'norm',
            'stem.3': 'conv',
            'stem.4': 'norm',
            'stem.6': 'conv',
            'stem.7': 'norm'
        }
    else:
        stem = {'conv1': 'conv', 'bn1': 'norm'}
    extra_stem = sorted(
        m for m in modules if m.startswith('stem.') and m not in stem)
    if extra_stem:
        raise ConversionError(f'unexpected deep-stem modules {extra_stem}; '
                              'a deep stem has stem.{0,1,3,4,6,7}')
    problems = [
        f'{m} (stem {kind})' for m, kind in stem.items()
        if modules.get(m) != kind
    ]

    blocks = defaultdict(dict)
    for module, kind in modules.items():
        match = re.fullmatch(r'layer([1-4])\.(\d+)\.(.+)', module)
        if match:
            blocks[(int(match.group(1)),
                    int(match.group(2)))][match.group(3)] = kind
    block_type = ('bottleneck' if any('conv3' in b
                                      for b in blocks.values()) else 'basic')
    width = 3 if block_type == 'bottleneck' else 2
    counts = []
    for stage in range(1, 5):
        indices = sorted(i for s, i in blocks if s == stage)
        if indices != list(range(len(indices))):
            raise ConversionError(
                f'layer{stage} has blocks {indices}; expected 0..n-1')
        counts.append(len(indices))
        for index in indices:
            parts = blocks[(stage, index)]
            for k in range(1, width + 1):
                for name, kind in ((f'conv{k}', 'conv'), (f'bn{k}', 'norm')):
                    if parts.get(name) != kind:
                        problems.append(f'layer{stage}.{index}.{name} '
                                        f'({kind})')
            extra = sorted(
                set(parts) - {
                    f'{p}{k}'
                    for p in ('conv', 'bn')
                    for k in range(1, width + 1)
                } - {p
                     for p in parts if p.startswith('downsample.')})
            if extra:
                problems += [
                    f'layer{stage}.{index}.{e} (not in a '
                    f'{block_type} block)' for e in extra
                ]
    if problems:
        raise ConversionError(
            f'incomplete ResNet: missing or wrong-kind modules '
            f'{_listing(problems)}')
    depth = DEPTHS.get((block_type, tuple(counts)))
    if depth is None:
        raise ConversionError(
            f'{block_type} blocks per stage {tuple(counts)} match no ResNet '
            f'depth (known: {sorted(set(DEPTHS.values()))})')
    report.depth = depth
    report.deep_stem = deep
    block_name = 'Bottleneck' if block_type == 'bottleneck' else 'BasicBlock'
    stem_name = '3x3 deep stem' if deep else '7x7 stem'
    report.arch = f'ResNet-{depth} ({block_name}, {stem_name})'


def convert_resnet(
    state_dict: Mapping[str, Tensor],
    to: Optional[str] = None,
    groups: Optional[int] = None,
    normalizers: Optional[Tuple[str, ...]] = None
) -> Tuple['OrderedDict[str, Tensor]', ConversionReport]:
    """Converts a ResNet state dict into the SN / SSN target layout.

    Args:
        state_dict: the source weights, as :func:`extract_state_dict`
            returns them (a ``module.`` prefix already stripped).
        to: ``'sn'`` or ``'ssn'``; None keeps a switchable source's own kind
            and makes SN from BN.
        groups: target group SN with G channel groups (``num_groups=G``):
            each layer's logits (and SSN flags) are copied to every group,
            so the converted layer computes what the source's did.  None
            keeps the source's layout (G = 1 for every source but a group
            checkpoint of this project, whose G must then match).
        normalizers: target an SN whose members are these (``'IN'``,
            ``'LN'``, ``'BN'``, ``'GN'``; the layer's ``normalizers=``)
            from an (IN, LN, BN) source: each member takes the source's
            logit of its name, and GN takes BN's (the cross-sample member
            of the source; our choice, so the initial ratios are the
            source's).  Without BN in the target, the BN running
            statistics are dropped.  None keeps the source's members.

    Returns:
        The converted state dict, which loads with ``strict=True`` into
        mmdet / mmseg ``ResNet(depth=report.depth, norm_cfg=dict(type=T))``
        (``deep_stem=True`` when ``report.deep_stem``), and the report.

    Raises:
        ConversionError: naming every key that cannot be mapped, or why the
            whole file cannot (foreign layout, incomplete or unknown ResNet,
            an SSN source asked to become SN).
    """
    source_format = detect_format(state_dict)
    if to is not None and to not in TARGETS:
        raise ConversionError(f'to must be one of {TARGETS}, got {to!r}')
    if groups is not None and (isinstance(groups, bool)
                               or not isinstance(groups, int) or groups < 1):
        raise ConversionError(
            f'groups must be a positive int (the target num_groups), got '
            f'{groups!r}')
    keys = list(state_dict)
    body = OrderedDict(state_dict)
    if any(k.startswith('backbone.') for k in keys):
        # An mmpretrain classifier (BN, or SN/SSN trained with ssn_norm).
        flavour = 'mmpretrain'
        body = OrderedDict(
            (k[len('backbone.'):] if k.startswith('backbone.') else k, v)
            for k, v in state_dict.items())
    elif source_format != BN:
        flavour = source_format
    elif any(k.startswith('stem.') for k in keys):
        flavour = 'openmmlab'
    else:
        flavour = 'torchvision'
    is_ssn_source = source_format == RELEASED_SSN or (
        source_format == SSN_NORM
        and any(k.endswith('.mean_fixed') for k in keys))
    if to is None:
        to = 'ssn' if is_ssn_source else 'sn'
    if is_ssn_source and to == 'sn':
        raise ConversionError(
            'this is an SSN checkpoint: its ratios come from SparsestMax '
            '(one-hot once frozen); as SN they would go through a softmax '
            'and change every feature.  Convert it with to="ssn" '
            '(--to ssn) and use norm_cfg=dict(type="SSN")')
    target = to.upper()
    report = ConversionReport(source_format, flavour, target)
    if source_format == RELEASED_SN and to == 'ssn':
        report.notes.append(
            'SN logits used as SSN logits: SSN maps them through '
            'SparsestMax, not softmax, so the features differ from the SN '
            'model until fine-tuned')
    if source_format == BN:
        report.notes.append(
            'BN affine and running statistics copied; ratio logits start '
            'uniform (IN, LN, BN mixed equally), an initialisation whose '
            'features differ from the BN model\'s')

    converted = OrderedDict()
    kinds = OrderedDict()
    unmapped = []
    for module, entries in _group_modules(body).items():
        if module in _CLASSIFIERS:
            report.dropped += [(f'{module}.{n}', 'ImageNet classifier')
                               for n in entries]
            continue
        target_module = _rename_module(module, source_format, flavour)
        if not _TARGET_MODULE.match(target_module):
            unmapped += [f'{module}.{n}' for n in entries]
            continue
        is_norm = ('running_mean' in entries or 'mean_weight' in entries
                   or 'weight' in entries and entries['weight'].dim() == 1)
        name_says_norm = re.search(r'(^|\.)bn\d$', target_module)
        name_says_conv = re.search(r'(^|\.)conv\d$', target_module)
        if (is_norm and name_says_conv) or (not is_norm and name_says_norm):
            raise ConversionError(
                f'{module}: holds {sorted(entries)}, which does not fit a '
                f'{"conv" if name_says_conv else "norm"} layer')
        if target_module != module:
            report.renamed.append((module, target_module))
        if is_norm:
            layer = _convert_norm(module, entries, source_format,
                                  is_ssn_source, to == 'ssn', report,
                                  target_module)
            kinds[target_module] = 'norm'
            report.num_norms += 1
        else:
            if set(entries) != {'weight'} or entries['weight'].dim() != 4:
                shapes = {n: tuple(v.shape) for n, v in entries.items()}
                raise ConversionError(
                    f'{module}: expected a bias-free conv with a 4-D '
                    f'"weight", got {shapes}')
            layer = {'weight': entries['weight'].clone()}
            kinds[target_module] = 'conv'
            report.num_convs += 1
        for name, value in layer.items():
            converted[f'{target_module}.{name}'] = value
    if unmapped:
        raise ConversionError(
            f'{len(unmapped)} keys are not part of a ResNet backbone '
            f'({flavour} layout): {_listing(unmapped)}.  Only ResNet '
            'backbones (stem, layer1-4, classifier) can be converted')
    _check_architecture(kinds, report)
    if normalizers is not None:
        converted = _to_normalizers(converted, normalizers, report)
    if groups is not None:
        converted = _to_groups(converted, groups, report)
    num_ratios = {
        v.shape[-1]
        for k, v in converted.items() if k.endswith('.mean_weight')
    }
    if num_ratios == {2}:
        report.notes.append(
            'the layers have 2 ratio logits (IN, LN) and no BN statistics: '
            f'build the target with norm_cfg=dict(type="{target}", '
            'using_bn=False)')
    elif len(num_ratios) > 1:
        raise ConversionError(
            'some layers have 3 ratio logits and some 2; one norm_cfg cannot '
            'build that network')
    if report.deep_stem:
        report.notes.append(
            'deep stem (stem.*): load into ResNetV1c/ResNetV1d '
            '(deep_stem=True), not into a 7x7-stem ResNet')
    else:
        report.notes.append(
            '7x7 stem (conv1/bn1): load into ResNet / ResNetV1b '
            '(deep_stem=False); mmseg\'s ResNetV1c has a deep stem and cannot '
            'take it (see docs/checkpoints.md)')
    return converted, report


# The source members, in logit order, and which one starts each target one.
_SOURCE_MEMBERS = ('IN', 'LN', 'BN')
_STARTS_FROM = dict(IN='IN', LN='LN', BN='BN', GN='BN')
_BN_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')


def _to_normalizers(converted: 'OrderedDict[str, Tensor]',
                    normalizers: Tuple[str, ...],
                    report: ConversionReport) -> 'OrderedDict[str, Tensor]':
    """Every layer's (IN, LN, BN) logits rearranged for the member set
    ``normalizers``: a member takes the logit of its own name, GN that of
    BN; BN's running statistics go where BN does."""
    if (isinstance(normalizers, str)
            or not isinstance(normalizers, (tuple, list)) or not normalizers
            or any(n not in _STARTS_FROM for n in normalizers)
            or len(set(normalizers)) != len(normalizers)):
        raise ConversionError(
            f'normalizers must be distinct names of {tuple(_STARTS_FROM)}, '
            f'e.g. (\'IN\', \'LN\', \'GN\'), got {normalizers!r}')
    normalizers = tuple(normalizers)
    index = [_SOURCE_MEMBERS.index(_STARTS_FROM[n]) for n in normalizers]
    keep_bn = 'BN' in normalizers
    out = OrderedDict()
    for key, value in converted.items():
        name = key.rpartition('.')[2]
        if name in ('mean_weight', 'var_weight'):
            if value.shape[-1] != len(_SOURCE_MEMBERS):
                raise ConversionError(
                    f'{key}: the source has {value.shape[-1]} ratio logits; '
                    'only an (IN, LN, BN) source can target other '
                    'normalizers')
            value = value[..., index].clone()
        elif name in _BN_BUFFERS and not keep_bn and key.rpartition(
                '.')[0] + '.mean_weight' in converted:
            continue
        out[key] = value
    if normalizers != _SOURCE_MEMBERS:
        starts = ', '.join(f'{n} from {_STARTS_FROM[n]}' for n in normalizers)
        report.notes.append(
            f'normalizers {normalizers}: logits {starts}'
            f'{"" if keep_bn else "; BN running statistics dropped"}; '
            f'build the target with normalizers={normalizers}')
    return out


def _to_groups(converted: 'OrderedDict[str, Tensor]', groups: int,
               report: ConversionReport) -> 'OrderedDict[str, Tensor]':
    """Every layer's logits (K,) as (G, K) and SSN flags (1,) as (G,):
    each channel group starts from the layer's own.  A group source must
    already have G groups; G = 1 keeps the released (K,) layout."""
    out = OrderedDict()
    for key, value in converted.items():
        name = key.rpartition('.')[2]
        if name in ('mean_weight', 'var_weight') and value.dim() == 2:
            if value.shape[0] != groups:
                raise ConversionError(
                    f'{key}: the source is group SN with {value.shape[0]} '
                    f'channel groups, not {groups}; convert its ungrouped '
                    'source instead')
        elif name in ('mean_weight', 'var_weight') and groups > 1:
            value = value.unsqueeze(0).repeat(groups, 1)
        elif name in ('mean_fixed', 'var_fixed') and value.numel() == 1:
            value = value.repeat(groups)
        out[key] = value
    if groups > 1:
        report.notes.append(
            f'group SN: each layer\'s ratio logits copied to its {groups} '
            f'channel groups; build the target with num_groups={groups}')
    return out


def check_loadable(state_dict: Mapping[str, Tensor], module) -> None:
    """Raises :class:`ConversionError` unless ``state_dict`` loads into
    ``module`` strictly (same keys, same shapes), explaining the usual
    mismatch: a 7×7-stem checkpoint against a deep-stem backbone."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f'{k}: checkpoint {tuple(state_dict[k].shape)}, model '
        f'{tuple(v.shape)}' for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return
    lines = [f'the checkpoint does not fit {type(module).__name__} exactly:']
    if missing:
        lines.append(f'missing {len(missing)}: {_listing(missing)}')
    if unexpected:
        lines.append(f'unexpected {len(unexpected)}: {_listing(unexpected)}')
    if shapes:
        lines.append(f'shape mismatch: {_listing(shapes)}')
    model_deep = any(k.startswith('stem.') for k in own)
    ckpt_deep = any(k.startswith('stem.') for k in state_dict)
    if model_deep and not ckpt_deep:
        lines.append(
            'the backbone has a deep 3x3 stem (ResNetV1c/V1d) but the '
            'checkpoint a 7x7 stem (ResNet v1): use type="ResNet" (mmseg: '
            '"ResNetV1b") with deep_stem=False, or start from a deep-stem '
            'BN checkpoint such as open-mmlab://resnet50_v1c converted '
            'with --to sn|ssn')
    elif ckpt_deep and not model_deep:
        lines.append('the checkpoint has a deep stem; build the backbone '
                     'as ResNetV1c / ResNetV1d (deep_stem=True)')
    if any(k.endswith(('.mean_fixed', '.radius')) for k in missing):
        lines.append('the model has SSN layers: convert with --to ssn')
    if any(k.endswith(('.mean_fixed', '.radius')) for k in unexpected):
        lines.append('the checkpoint is SSN: build the model with '
                     'norm_cfg=dict(type="SSN")')
    raise ConversionError('\n'.join(lines))
