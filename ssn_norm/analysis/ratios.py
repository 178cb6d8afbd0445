"""IN/LN/BN(/GN) importance ratios of SN and SSN layers, from a model or a
file.

A group SN layer (``num_groups = G > 1``) has G ratio vectors, one per
channel group: it is reported as G entries named ``<layer>[g]`` (each group
holds ``C / G`` channels), so averages, counts of one-hot layers and plots
count each channel group as a layer of its own.

One function computes the ratios for a whole model at once, from the ratio
logits and the SSN buffers, with the layers' own functions
(:mod:`ssn_norm.ops.ratios`): SN takes a softmax; SSN takes SparsestMax at
the layer's saved ``radius``, and a ratio whose ``mean_fixed``/``var_fixed``
flag is set is the one-hot vector of its logits' argmax (the layer overwrote
the logits with that vector when it froze).  All layers of one kind are
stacked, so a model costs a handful of tensor operations and one host
transfer, whether the tensors live on the CPU or an accelerator.
"""
from dataclasses import dataclass
from typing import (Dict, Iterable, List, Mapping, NamedTuple, Optional,
                    Sequence, Tuple)

import torch
from torch import Tensor, nn

from ..layers.switchable_norm import NORMALIZERS, SSN
from ..ops.moments import NAMES
from ..ops.ratios import softmax_ratios, sparsestmax_ratios
from ..utils import switchable_norms

#: Names under these top-level modules are grouped by their first two
#: components (``backbone.layer1``, ``roi_head.mask_head``), every other name
#: by its first component (``neck``, ``decode_head``).
STAGE_PREFIXES = ('backbone', 'roi_head')

# Names of a ResNet stem's modules in mmdet/mmseg/mmaction backbones.
_STEM_NAMES = ('stem', 'conv1', 'bn1', 'norm1')
_SSN_KEYS = ('radius', 'mean_fixed', 'var_fixed')


@dataclass(frozen=True)
class LayerRatios:
    """The ratios of one switchable norm layer.

    Attributes:
        name: module name in the model, e.g. ``backbone.layer1.0.bn1``.
        kind: ``'SN'`` (softmax ratios; SyncSN included) or ``'SSN'``.
        mean: mean ratios over :attr:`normalizers`; they sum to one.
        var: variance ratios over :attr:`normalizers`; they sum to one.
        radius: the SparsestMax radius the ratios were taken at (SSN only).
        frozen: whether the mean / variance ratios are frozen one-hot (SSN
            only; always ``(False, False)`` for SN).
        members: the layer's normalizers in logit order; empty: the
            default set of that length (IN, LN[, BN]).
    """

    name: str
    kind: str
    mean: Tuple[float, ...]
    var: Tuple[float, ...]
    radius: Optional[float] = None
    frozen: Tuple[bool, bool] = (False, False)
    members: Tuple[str, ...] = ()

    @property
    def normalizers(self) -> Tuple[str, ...]:
        """The layer's normalizers: :attr:`members`, or ``('IN', 'LN',
        'BN')`` / ``('IN', 'LN')`` (``using_bn=False``) by length."""
        return self.members or NORMALIZERS[:len(self.mean)]

    @property
    def one_hot(self) -> bool:
        """Both ratios frozen one-hot (the layer is a plain normaliser)."""
        return all(self.frozen)

    def share(self, statistic: str, normalizer: str) -> float:
        """Ratio of ``normalizer`` in the ``'mean'`` or ``'var'`` mix; 0 if
        the layer does not have that normaliser."""
        values = self.mean if statistic == 'mean' else self.var
        names = self.normalizers
        return values[names.index(normalizer)] if normalizer in names else 0.


class _RatioLogits(NamedTuple):
    """What the ratios of one layer are computed from."""
    name: str
    mean_logits: Tensor
    var_logits: Tensor
    radius: Optional[Tensor]  # None for SN
    mean_fixed: Optional[Tensor]
    var_fixed: Optional[Tensor]
    members: Tuple[str, ...] = ()


def _row(flags: Optional[Tensor], g: int) -> Optional[Tensor]:
    return None if flags is None else flags[g:g + 1]


def _per_group(entry: _RatioLogits) -> List[_RatioLogits]:
    """A group layer's (G, K) logits as G entries ``name[g]``; a (K,)
    layer as it is."""
    if entry.mean_logits.dim() == 1:
        return [entry]
    return [
        entry._replace(
            name=f'{entry.name}[{g}]',
            mean_logits=entry.mean_logits[g],
            var_logits=entry.var_logits[g],
            mean_fixed=_row(entry.mean_fixed, g),
            var_fixed=_row(entry.var_fixed, g))
        for g in range(entry.mean_logits.shape[0])
    ]


def present_normalizers(layers: Sequence['LayerRatios']) -> Tuple[str, ...]:
    """IN, LN, BN and any other normalizer of ``layers`` (GN), in
    :data:`~ssn_norm.ops.moments.NAMES` order."""
    found = set(NORMALIZERS)
    for layer in layers:
        found.update(layer.normalizers)
    return tuple(name for name in NAMES if name in found)


def _compute(entries: Sequence[_RatioLogits]) -> List[LayerRatios]:
    """Ratios of ``entries`` in their order, vectorised per (kind, K);
    group layers become one entry per group (:func:`_per_group`)."""
    entries = [one for entry in entries for one in _per_group(entry)]
    buckets: Dict[Tuple[bool, int], List[int]] = {}
    for index, entry in enumerate(entries):
        key = (entry.radius is not None, entry.mean_logits.numel())
        buckets.setdefault(key, []).append(index)
    results: List[Optional[LayerRatios]] = [None] * len(entries)
    for (is_ssn, _), indices in buckets.items():
        chosen = [entries[i] for i in indices]
        logits = torch.stack([
            torch.stack([e.mean_logits, e.var_logits]) for e in chosen
        ]).detach().float()  # (L, 2, K)
        if is_ssn:
            radius = torch.stack([e.radius.reshape(
                ()) for e in chosen]).detach().to(logits).unsqueeze(-1)
            fixed = torch.stack([
                torch.stack(
                    [e.mean_fixed.reshape(()),
                     e.var_fixed.reshape(())]) for e in chosen
            ]).bool()  # (L, 2)
            ratios = sparsestmax_ratios(
                logits.flatten(0, 1),
                radius.expand(-1, 2).flatten(), fixed.flatten(),
                False).ratios.view_as(logits)
            radius_list = radius.squeeze(-1).tolist()
            fixed_list = fixed.tolist()
        else:
            ratios = softmax_ratios(logits)
            radius_list = [None] * len(chosen)
            fixed_list = [(False, False)] * len(chosen)
        for index, entry, (mean, var), radius_value, frozen in zip(
                indices, chosen, ratios.tolist(), radius_list, fixed_list):
            results[index] = LayerRatios(
                name=entry.name,
                kind='SSN' if is_ssn else 'SN',
                mean=tuple(mean),
                var=tuple(var),
                radius=radius_value,
                frozen=tuple(bool(f) for f in frozen),
                members=entry.members)
    return results


def model_ratios(model: nn.Module) -> List[LayerRatios]:
    """Current ratios of every SN/SSN (and Sync) layer of ``model``.

    Layers come in module order (depth order for the OpenMMLab models), a
    group SN layer as one entry per channel group (``name[g]``).  The
    result equals each layer's own :meth:`ratios`; nothing in the model is
    modified (SSN layers do not freeze here).
    """
    entries = []
    for name, layer in switchable_norms(model):
        is_ssn = isinstance(layer, SSN)
        entries.append(
            _RatioLogits(name, layer.mean_weight, layer.var_weight,
                         layer.radius if is_ssn else None,
                         layer.mean_fixed if is_ssn else None,
                         layer.var_fixed if is_ssn else None,
                         layer.normalizers))
    with torch.no_grad():
        return _compute(entries)


def _strip_wrapper_prefix(state_dict: Mapping[str, object]) -> Dict:
    """Drop the ``module.`` prefix a (Distributed)DataParallel save adds."""
    keys = list(state_dict)
    if keys and all(k.startswith('module.') for k in keys):
        return {k[len('module.'):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def state_dict_ratios(state_dict: Mapping[str, object]) -> List[LayerRatios]:
    """Ratios of every SN/SSN layer stored in a model ``state_dict``.

    A layer is a prefix ``p`` with tensors ``p.mean_weight`` and
    ``p.var_weight``; it is SSN if it also has ``p.radius``/``p.mean_fixed``/
    ``p.var_fixed`` (as in this project's and the released SSN checkpoints).
    Layers come in the order of the state dict, i.e. module (depth) order.
    A ``module.`` prefix on every key is dropped.

    Raises:
        ValueError: a layer's logits are not two vectors of the same length
            2 or 3, or an SSN layer lacks one of its three buffers.
    """
    state_dict = _strip_wrapper_prefix(state_dict)
    entries = []
    for key, value in state_dict.items():
        if not key.endswith('.mean_weight') or not isinstance(value, Tensor):
            continue
        prefix = key[:-len('.mean_weight')]
        var = state_dict.get(prefix + '.var_weight')
        if not isinstance(var, Tensor):
            raise ValueError(f'{key} has no matching {prefix}.var_weight; '
                             'is this an SN/SSN state dict?')
        if (value.dim() not in (1, 2) or value.shape != var.shape
                or value.shape[-1] not in (2, 3)):
            raise ValueError(
                f'{prefix}: ratio logits must be two vectors of length 3 '
                '(IN, LN, BN) or 2 (IN, LN), or (G, 3) / (G, 2) for group '
                f'SN, got mean_weight {tuple(value.shape)} and var_weight '
                f'{tuple(var.shape)}; other normaliser sets are not '
                'recorded in a state dict: build the model and use '
                'model_ratios')
        buffers = [state_dict.get(f'{prefix}.{name}') for name in _SSN_KEYS]
        present = [isinstance(b, Tensor) for b in buffers]
        if any(present) and not all(present):
            missing = [n for n, p in zip(_SSN_KEYS, present) if not p]
            raise ValueError(f'{prefix} looks like an SSN layer but lacks '
                             f'{", ".join(missing)}; cannot compute its '
                             'SparsestMax ratios')
        if all(present):
            entries.append(_RatioLogits(prefix, value, var, *buffers))
        else:
            entries.append(_RatioLogits(prefix, value, var, None, None, None))
    with torch.no_grad():
        return _compute(entries)


def group_of(name: str, stage_prefixes: Iterable[str] = STAGE_PREFIXES) -> str:
    """The stage or top-level module a layer belongs to.

    Under a stage prefix: the child module (``backbone.layer1.0.bn1`` →
    ``backbone.layer1``; ``roi_head.mask_head.convs.0.bn`` →
    ``roi_head.mask_head``); a norm of the stem (mmdet/mmseg
    ``backbone.bn1``, mmseg ``backbone.stem.1``, mmaction
    ``backbone.conv1.bn``) → ``backbone.stem``.  Elsewhere the top-level
    module: ``neck.fpn_convs.0.bn`` → ``neck``.
    """
    parts = name.split('.')
    if parts[0] not in tuple(stage_prefixes) or len(parts) == 1:
        return parts[0]
    if len(parts) == 2 or parts[1] in _STEM_NAMES:
        return parts[0] + '.stem'
    return '.'.join(parts[:2])


def mean_shares(layers: Sequence[LayerRatios]) -> Dict[Tuple[str, str], float]:
    """Mean ratio of each normaliser over ``layers``.

    Keys are ``(statistic, normalizer)`` with statistic ``'mean'`` or
    ``'var'``; a layer without BN (``using_bn=False``) counts 0 for BN, so
    the shares of each statistic still sum to one.  The normalizers are
    IN, LN, BN and any other one of ``layers`` (GN).
    """
    if not layers:
        raise ValueError('mean_shares needs at least one layer')
    return {
        (statistic, normalizer):
        sum(layer.share(statistic, normalizer)
            for layer in layers) / len(layers)
        for statistic in ('mean', 'var')
        for normalizer in present_normalizers(layers)
    }


def grouped(
    layers: Sequence[LayerRatios],
    stage_prefixes: Iterable[str] = STAGE_PREFIXES
) -> Dict[str, List[LayerRatios]]:
    """``layers`` split by :func:`group_of`, groups in order of appearance.
    """
    groups: Dict[str, List[LayerRatios]] = {}
    prefixes = tuple(stage_prefixes)
    for layer in layers:
        groups.setdefault(group_of(layer.name, prefixes), []).append(layer)
    return groups


def checkpoint_ratios(filename: str) -> List[LayerRatios]:
    """Ratios of every SN/SSN layer in a checkpoint file.

    ``filename`` is anything mmengine's ``CheckpointLoader`` reads (a local
    file, a URL, ``open-mmlab://``); mmengine-style ``{'state_dict': ...,
    'meta': ...}`` files and bare state dicts are both accepted.  Local
    files load without running code from them (``ssn_norm.compat``).

    Raises:
        ValueError: the file holds no state dict, or no SN/SSN layer.
    """
    from mmengine.runner import CheckpointLoader
    checkpoint = CheckpointLoader.load_checkpoint(filename, map_location='cpu')
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f'{filename}: expected a checkpoint dict, got '
                         f'{type(checkpoint).__name__}')
    state_dict = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{filename}: 'state_dict' is a "
                         f'{type(state_dict).__name__}, not a mapping')
    layers = state_dict_ratios(state_dict)
    if not layers:
        raise ValueError(
            f'{filename} has no SN/SSN layer (no *.mean_weight / '
            '*.var_weight tensors); ratios exist only for models trained '
            "with norm_cfg=dict(type='SN' | 'SSN' | 'SyncSN' | 'SyncSSN')")
    return layers
