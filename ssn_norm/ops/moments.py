"""The one definition of SN/SSN's statistics, their mix and its backward.

Every path computes the ``O(N·C)`` part of the layer here, from the IN
moments of the rows ``(n, c)``: the reference (plain autograd), the fast
autograd Function (forward without autograd, backward
:func:`mix_backward`), the frozen selection, SyncSN's synchronised batch
moments, batch statistics (:mod:`ssn_norm.batch_stats`) and deployment
(:mod:`ssn_norm.deploy`).  The passes over all ``N·C·L`` elements are
:func:`var_mean_in` (the reference the kernel providers of
:mod:`ssn_norm.ops.providers` are tested against) and the affine map.
Pure PyTorch.

Numerics (the released SN code, so its checkpoints evaluate identically):

* IN moments per row ``(n, c)`` (:func:`var_mean_in`): the mean and the
  *unbiased* variance; a row of one element has variance 0 (not NaN).
* Every other member is declared (:data:`DECLARED`) by where it averages
  the IN mean and second moment ``var_in + mean_in²``: over the samples
  of the batch (``batch``), and/or over groups of consecutive channels
  (``groups``: LN is one group, GN ``gn_groups``).  Its moments are
  ``mean = A(mean_in)``, ``var = clamp(A(var_in + mean_in²) - mean², 0)``
  (:func:`variance`; the clamp only absorbs rounding, its gradient passes
  where the difference is ≥ 0).  The batch average is SyncSN's all-reduce
  when the layer synchronises, and the running statistics in eval (BN
  takes ``running_mean``/``running_var`` as they are).
* The mixed mean and variance are ``Σ_k ratio_k · moment_k`` (:func:`mix`;
  a frozen selection takes one member's), then ``y = x · scale + shift``
  with ``scale = γ / sqrt(var + eps)``, ``shift = β - mean · scale``
  (:func:`scale_shift`).
* dtype: statistics, ratios, mix and factors in :func:`stat_dtype` of the
  input (fp32 for fp16/bf16/fp32, fp64 for fp64); the output has the
  input's.

Each average ``A`` is an orthogonal projection (a mean, broadcast back),
so it is its own transpose: :func:`mix_backward` carries gradients back
through the same functions that computed the moments.

Ratios are ``(2, K, 1)`` (the mean ratios, then the variance ratios;
every channel shares them) or, for group SN, ``(2, K, C)``: channel ``c``
mixes with the ratios of its channel group (:func:`channel_ratios`).  One
code path serves both, with no branch on a tensor's shape, so that
``torch.fx`` traces it (deployment).
"""
from functools import lru_cache
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .collectives import all_reduce_sum

__all__ = [
    'BatchMoments', 'DECLARED', 'Factors', 'GN_GROUPS', 'MEMBERS', 'Member',
    'MomentSpec', 'NAMES', 'Sync', 'channel_ratios', 'check_normalizers',
    'factors', 'member_table', 'members', 'mix', 'mix_backward', 'names',
    'normalize_reference', 'scale_shift', 'stat_dtype', 'uses_input_moments',
    'var_mean_in', 'variance'
]

#: ``Member.groups`` placeholder for the layer's ``gn_groups``.
GN_GROUPS = 'gn_groups'


class Member(NamedTuple):
    """One normaliser of the mix, declared by where it averages.

    Attributes:
        name: as in the logs, deploy files and plots (``'IN'``, ...).
        batch: averages over the samples of the batch: replaced by the
            running statistics in eval, synchronised by SyncSN, recorded
            by batch statistics; a layer has running statistics exactly
            when one of its members has ``batch``.
        groups: None: each channel on its own; ``G``: averages over each
            of ``G`` groups of consecutive channels; :data:`GN_GROUPS`:
            the layer's ``gn_groups``.  ``Member(name, False, None)`` is
            IN itself: the row moments, its variance not derived.
    """

    name: str
    batch: bool
    groups: Union[None, int, str]

    @property
    def is_in(self) -> bool:
        """Whether this member is IN: no average at all."""
        return not self.batch and self.groups is None


#: The members a layer may mix, declared once.  Adding a member is one
#: entry here (docs/switchable_norms.md, "Adding a member").
DECLARED: Dict[str, Member] = {
    'IN': Member('IN', batch=False, groups=None),
    'LN': Member('LN', batch=False, groups=1),
    'BN': Member('BN', batch=True, groups=None),
    'GN': Member('GN', batch=False, groups=GN_GROUPS),
}

#: Every member name, in :data:`DECLARED` order.
NAMES: Tuple[str, ...] = tuple(DECLARED)

#: The released layer's members, in the order of its ratio logits.
MEMBERS: Tuple[Member, ...] = tuple(DECLARED[n] for n in ('IN', 'LN', 'BN'))


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics dtype: fp32 for fp16/bf16/fp32, fp64 for fp64."""
    return torch.promote_types(dtype, torch.float32)


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    # ``t.to(dtype)``, without the call where it is one already (a
    # torch.fx proxy always takes the call).
    if isinstance(dtype, torch.dtype) and isinstance(
            t, Tensor) and t.dtype == dtype:
        return t
    return t.to(dtype)


def var_mean_in(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Unbiased variance and mean over the last dim of ``x``, in
    :func:`stat_dtype`; a single element has variance 0 (the released IN
    numerics).

    Two passes (the mean, then the squared deviations): as accurate as
    Welford's update and faster on short rows.  Differentiable and
    traceable (``torch.fx``, ``torch.compile``, ONNX); the reference every
    kernel provider's row moments are tested against.
    """
    xs = x.to(stat_dtype(x.dtype))
    length = xs.shape[-1]
    mean = xs.mean(-1, keepdim=True)
    # length - 1, or 1 for a single element (whose deviation is 0).
    var = (xs - mean).square().sum(-1) / (length - 1 + (length == 1))
    return var, mean.squeeze(-1)


def variance(mean: Tensor, sqmean: Tensor) -> Tensor:
    """``clamp(sqmean - mean², 0)``: a variance from its first two moments.

    The clamp only absorbs rounding (a true variance is ≥ 0); its gradient
    passes where ``sqmean - mean² ≥ 0``.
    """
    return _variance_and_diff(mean, sqmean)[0]


def _variance_and_diff(mean: Tensor, sqmean: Tensor) -> Tuple[Tensor, Tensor]:
    # The variance and the unclamped difference (where the clamp's
    # gradient passes, for the hand-derived backward).
    diff = torch.addcmul(sqmean, mean, mean, value=-1)
    return diff.clamp(min=0), diff


def check_normalizers(normalizers,
                      gn_groups: Optional[int] = None,
                      num_features: Optional[int] = None) -> Tuple[str, ...]:
    """``normalizers`` as a tuple of names, or a ``ValueError`` naming the
    fix: the set must be a non-empty sequence of distinct names of
    :data:`DECLARED`; ``gn_groups`` is given exactly when a member takes
    it (GN), is a positive int and divides ``num_features`` (when
    given)."""
    known = tuple(DECLARED)
    if isinstance(normalizers, str) or not isinstance(normalizers,
                                                      (tuple, list)):
        raise ValueError('normalizers must be a tuple of names from '
                         f'{known}, e.g. (\'IN\', \'LN\', \'BN\'), got '
                         f'{normalizers!r}')
    normalizers = tuple(normalizers)
    if not normalizers:
        raise ValueError('normalizers must name at least one of '
                         f'{known}, got an empty set')
    for name in normalizers:
        if name not in DECLARED:
            raise ValueError(f'unknown normalizer {name!r} in normalizers='
                             f'{normalizers}; valid ones are {known}')
        if normalizers.count(name) > 1:
            raise ValueError(f'normalizer {name!r} is repeated in '
                             f'normalizers={normalizers}; name each once')
    takers = [n for n in normalizers if DECLARED[n].groups == GN_GROUPS]
    if takers:
        if (gn_groups is None or isinstance(gn_groups, bool)
                or not isinstance(gn_groups, int) or gn_groups <= 0):
            raise ValueError(
                f'normalizers include {takers[0]!r}: gn_groups must be a '
                'positive int (channels per GN group = C / gn_groups), got '
                f'gn_groups={gn_groups!r}')
        if num_features is not None and num_features % gn_groups:
            raise ValueError(
                f'gn_groups={gn_groups} does not divide the {num_features} '
                'channels; choose a divisor of the channel count')
    elif gn_groups is not None:
        raise ValueError(
            f'gn_groups={gn_groups!r} is given but \'GN\' is not among '
            f'normalizers={normalizers}; add \'GN\' or drop gn_groups')
    return normalizers


def member_table(normalizers: Sequence[str] = ('IN', 'LN', 'BN'),
                 gn_groups: Optional[int] = None) -> Tuple[Member, ...]:
    """The members of a layer mixing ``normalizers`` (in logit order),
    with :data:`GN_GROUPS` replaced by ``gn_groups``.

    Guarantees: the same configuration gives the identical tuple.  Call
    :func:`check_normalizers` first: names are not checked here.
    """
    return _member_table(
        tuple(DECLARED.items()), tuple(normalizers), gn_groups)


@lru_cache(maxsize=None)
def _member_table(declared, normalizers, gn_groups) -> Tuple[Member, ...]:
    by_name = dict(declared)
    return tuple(
        by_name[name]._replace(groups=gn_groups) if by_name[name].groups ==
        GN_GROUPS else by_name[name] for name in normalizers)


def members(using_bn: bool = True) -> Tuple[Member, ...]:
    """The released layer's members: all, or those not over the batch."""
    return tuple(m for m in MEMBERS if using_bn or not m.batch)


def names(using_bn: bool = True) -> Tuple[str, ...]:
    """Names of :func:`members`, in logit order."""
    return tuple(m.name for m in members(using_bn))


def channel_ratios(ratios: Tensor, channels: int) -> Tensor:
    """Ratios as the mix takes them: ``(2, K)`` as ``(2, K, 1)``; group
    ratios ``(2, G, K)`` as ``(2, K, C)``, channel ``c`` holding the row of
    its group ``c // (C / G)``.  Differentiable (the backward sums over
    each group's channels)."""
    if ratios.dim() == 2:
        return ratios.unsqueeze(-1)
    return ratios.transpose(1, 2).repeat_interleave(
        channels // ratios.shape[1], dim=2)


class Sync(NamedTuple):
    """Batch averages over every process of ``group`` (a process group;
    None: the default one): SyncSN with more than one process."""

    group: Optional[object] = None


class MomentSpec(NamedTuple):
    """What a layer's forward hands the ops besides its tensors: data only.

    Attributes:
        members: the layer's :func:`member_table`, in logit order.
        training: batch statistics (True) or running ones (False).
        eps: added to the mixed variance.
        running: ``(running_mean, running_var)`` (C,); used in eval.
        selected: ``(mean_idx, var_idx)`` of a frozen one-hot layer in
            eval (only those members are computed), else None.
        sync: :class:`Sync` (SyncSN with more than one process), or None:
            batch averages over this process's batch.
    """

    members: Tuple[Member, ...]
    training: bool
    eps: float = 1e-5
    running: Optional[Tuple[Tensor, Tensor]] = None
    selected: Optional[Tuple[int, int]] = None
    sync: Optional[Sync] = None

    @property
    def using_bn(self) -> bool:
        """Whether a member averages over the batch."""
        return any(m.batch for m in self.members)


class BatchMoments(NamedTuple):
    """A training forward's per-channel batch moments, for the running
    statistics and batch statistics: ``mean``, ``sqmean`` (the average
    of ``var_in + mean_in²``) and ``var`` (:func:`variance`), each (C,)
    and detached, over ``count`` samples (all processes' together when
    synchronised: then a 0-dim tensor)."""

    mean: Tensor
    sqmean: Tensor
    var: Tensor
    count: Union[int, Tensor]


def _group_average(t: Tensor, groups: int) -> Tensor:
    """Mean of ``t`` (..., C) over each of ``groups`` groups of
    consecutive channels, broadcastable to ``t``."""
    if groups == 1:
        return t.mean(-1, keepdim=True)
    grouped = t.unflatten(-1, (groups, -1))
    return grouped.mean(-1, keepdim=True).expand_as(grouped).flatten(-2)


def _batch_average(
        t: Tensor,
        sync: Optional[Sync] = None,
        count: Optional[Tensor] = None) -> Tuple[Tensor, Union[int, Tensor]]:
    """Mean of ``t`` (..., N, C) over the samples, (..., 1, C), and the
    number of samples: over every process with ``sync``, by one packed,
    differentiable all-reduce of the sums and the count (the count given:
    a known total, its slot 0).  Every process makes the same collective,
    whichever path it runs."""
    num = t.shape[-2]
    if sync is None:
        return t.mean(-2, keepdim=True), num
    sums = t.sum(-2, keepdim=True)
    packed = torch.cat(
        [sums.reshape(-1),
         sums.new_full((1, ), num if count is None else 0)])
    total = all_reduce_sum(packed, sync.group)
    if count is None:
        count = total[-1].detach()
    return (total[:-1] / count).view_as(sums), count


class Moments(NamedTuple):
    """Every member's moments, in the table's order.

    ``terms``: per member, its mean and variance stacked, (2, N', C')
    broadcastable to (2, N, C) (IN's (2, N, C), LN's (2, N, 1), BN's
    (2, 1, C), ...); ``derived``: per member with a derived variance, its
    mean and the unclamped ``sqmean - mean²`` (None for IN and running
    statistics); ``batch``: the recorded :class:`BatchMoments` (training
    with a batch member), else None.
    """

    terms: List[Tensor]
    derived: List[Optional[Tuple[Tensor, Tensor]]]
    batch: Optional[BatchMoments]


def member_moments(var_in: Tensor,
                   mean_in: Tensor,
                   table: Tuple[Member, ...],
                   running: Optional[Tuple[Tensor, Tensor]] = None,
                   sync: Optional[Sync] = None) -> Moments:
    """Every member's mean and variance from the IN moments (N, C).

    ``running`` replaces the batch average by the running statistics
    (eval); ``sync`` takes the batch average over every process.  Plain
    differentiable ops.
    """
    stats = torch.stack([mean_in, torch.addcmul(var_in, mean_in, mean_in)])
    batch_stats = count = batch = None
    terms, derived = [], []
    for member in table:
        if member.is_in:
            terms.append(torch.stack([mean_in, var_in]))
            derived.append(None)
            continue
        source = stats
        if member.batch:
            if batch_stats is None:
                batch_stats, count = _batch_stats(stats, running, sync)
            if running is not None and member.groups is None:
                # BN in eval: the running statistics as they are.
                terms.append(
                    _as(torch.stack(running).unsqueeze(1), mean_in.dtype))
                derived.append(None)
                continue
            source = batch_stats
        if member.groups is not None:
            source = _group_average(source, member.groups)
        mean, sqmean = source.unbind()
        var, diff = _variance_and_diff(mean, sqmean)
        terms.append(torch.stack([mean, var]))
        derived.append((mean, diff))
        if member.batch and member.groups is None:
            batch = BatchMoments(
                _record(mean), _record(sqmean), _record(var), count)
    if batch is None and count is not None:
        # Batch members over channel groups only: the per-channel ones.
        mean, sqmean = batch_stats.detach().view(2, -1).unbind()
        batch = BatchMoments(mean, sqmean, variance(mean, sqmean), count)
    return Moments(terms, derived, batch)


def _record(t: Tensor) -> Tensor:
    # (1, C) as the (C,) of BatchMoments, detached.
    return (t.detach() if t.requires_grad else t).view(-1)


def _batch_stats(stats: Tensor, running, sync):
    """The per-channel batch average of ``stats`` (2, 1, C) and its sample
    count; in eval, the running statistics' (and None)."""
    if running is None:
        return _batch_average(stats, sync)
    mean = _as(running[0], stats.dtype)
    sqmean = torch.addcmul(_as(running[1], stats.dtype), mean, mean)
    return torch.stack([mean, sqmean]).unsqueeze(1), None


def mix(parts: Sequence[Tensor], terms: Sequence[Tensor]) -> Tensor:
    """``Σ_k parts[k] · terms[k]``: the mixed mean and variance (2, N, C)
    from each member's stacked mean and variance (broadcastable to
    (2, N, C)) and its ratios ``parts[k]`` (2, 1, 1) or (2, 1, C)
    (:func:`ratio_parts`)."""
    out = terms[0] * parts[0]
    for k in range(1, len(terms)):
        out = torch.addcmul(out, terms[k], parts[k])
    return out


def ratio_parts(ratios: Tensor) -> Tuple[Tensor, ...]:
    """Ratios (2, K, 1) or (2, K, C) as :func:`mix` takes them: per member
    its mean and variance ratio, (2, 1, 1) or (2, 1, C)."""
    return ratios.unsqueeze(2).unbind(1)


def scale_shift(mean: Tensor, var: Tensor, weight: Tensor, bias: Tensor,
                eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """``1/sqrt(var + eps)``, ``scale`` and ``shift`` of ``y = x * scale +
    shift``, in ``var``'s dtype."""
    inv_std = torch.rsqrt(var + eps)
    scale = inv_std * _as(weight, inv_std.dtype)
    return inv_std, scale, torch.addcmul(
        _as(bias, inv_std.dtype), mean, scale, value=-1)


class MixSaved(NamedTuple):
    """What :func:`mix_backward` needs from a training forward."""

    table: Tuple[Member, ...]
    sync: Optional[Sync]
    ratios: Tensor
    parts: Tuple[Tensor, ...]
    moments: Moments
    mean_in: Tensor
    mean: Tensor
    inv_std: Tensor
    scale: Tensor


class Factors(NamedTuple):
    """``scale`` and ``shift`` of ``y = x * scale + shift``, broadcastable
    to (N, C), the
    recorded :class:`BatchMoments` (or None) and, for :func:`mix_backward`,
    what the forward computed."""

    scale: Tensor
    shift: Tensor
    batch: Optional[BatchMoments]
    saved: MixSaved


def factors(var_in: Tensor, mean_in: Tensor, weight: Tensor, bias: Tensor,
            ratios: Optional[Tensor], spec: MomentSpec) -> Factors:
    """The whole ``O(N·C)`` part of the layer: members, mix (or the frozen
    selection) and factors, from the IN moments (N, C).

    Args:
        var_in, mean_in: per-row unbiased variance and mean (N, C), in the
            statistics dtype.
        weight, bias: (C,) affine parameters.
        ratios: (2, K, 1) or (2, K, C); None with ``spec.selected`` in
            eval.
        spec: the layer's decisions.

    Plain differentiable ops: the reference differentiates them, the fast
    path runs them without autograd and differentiates with
    :func:`mix_backward`.
    """
    table, running, sync = spec.members, None, None
    if spec.training:
        sync = spec.sync
    elif spec.using_bn:
        running = spec.running
    selected = None if spec.training else spec.selected
    if selected is not None:
        # Only the selected members: one of each, in a table of their own.
        table = tuple(dict.fromkeys(table[i] for i in selected))
        selected = [table.index(spec.members[i]) for i in selected]
    moments = member_moments(var_in, mean_in, table, running, sync)
    parts = ()
    if selected is not None:
        mean = moments.terms[selected[0]][0]
        var = moments.terms[selected[1]][1]
    else:
        ratios = _as(ratios, var_in.dtype)
        parts = ratio_parts(ratios)
        mean, var = mix(parts, moments.terms).unbind()
    inv_std, scale, shift = scale_shift(mean, var, weight, bias, spec.eps)
    return Factors(
        scale, shift, moments.batch,
        MixSaved(table, sync, ratios, parts, moments, mean_in, mean, inv_std,
                 scale))


def uses_input_moments(spec: MomentSpec) -> bool:
    """Whether the layer needs the input's row moments: not when a frozen
    selection in eval uses only the running statistics."""
    return (spec.training or spec.selected is None
            or not all(spec.members[i].batch for i in spec.selected))


def normalize_reference(
        x3: Tensor, weight: Tensor, bias: Tensor, ratios: Optional[Tensor],
        spec: MomentSpec) -> Tuple[Tensor, Optional[BatchMoments]]:
    """SN/SSN of ``x3`` (N, C, L) in plain differentiable ops: the output
    (as ``x3``) and the batch moments of a training forward (or None).

    The reference every other path is tested against, and the path of
    outer tracers, exports, double backward, eval with gradients and
    empty inputs.
    """
    if uses_input_moments(spec):
        var_in, mean_in = var_mean_in(x3)
    else:
        var_in = mean_in = x3.new_zeros(
            x3.shape[:2], dtype=stat_dtype(x3.dtype))
    found = factors(var_in, mean_in, weight, bias, ratios, spec)
    out = (
        x3.to(found.scale.dtype) * found.scale.unsqueeze(-1) +
        found.shift.unsqueeze(-1))
    return out.to(x3.dtype), found.batch


def mix_backward(
        saved: MixSaved, sum_g: Tensor,
        sum_gx: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The hand-derived backward of :func:`factors` in training, from the
    gradients of ``shift`` (``Σ g`` per row) and ``scale`` (``Σ g·x``).

    Each member's average is its own transpose, so the gradients go back
    through the functions that made the moments (SyncSN's all-reduce
    included).  Tested against autograd of :func:`factors`.

    Returns:
        Gradients of the IN variance and mean (N, C), of the ratios (as
        given) and of weight and bias (C,), in the statistics dtype.
    """
    moments = saved.moments
    grad_mean = torch.mul(sum_g, saved.scale).neg_()
    grad_scale = torch.addcmul(sum_gx, sum_g, saved.mean, value=-1)
    grad_bias = sum_g.sum(0)
    grad_weight = torch.mul(grad_scale, saved.inv_std).sum(0)
    # d rsqrt(v + eps) = -1/2 (v + eps)^(-3/2) dv.
    grad_var = grad_scale.mul_(saved.scale).mul_(
        saved.inv_std.square()).mul_(-0.5)
    grads = torch.stack([grad_mean, grad_var])
    parts = saved.parts
    grad_ratios, grad_in, local, over_batch = [], None, None, None
    for k, member in enumerate(saved.table):
        term = moments.terms[k]
        grad_ratios.append((grads * term).sum_to_size(parts[k].shape))
        back = grads * parts[k]
        if member.is_in:
            grad_in = _add(grad_in, back)
            continue
        # var = clamp(sqmean - mean², 0) of the averages of the IN mean
        # and second moment; the mask and the mean are constant over the
        # samples of a batch member, so its batch average comes last.
        if member.groups is not None:
            back = _group_average(back, member.groups)
        mean, diff = moments.derived[k]
        back_mean, back_sq = back.unbind()
        back_sq.mul_(diff >= 0)
        back_mean.addcmul_(mean, back_sq, value=-2)
        if member.batch:
            over_batch = _add(over_batch, back)
        else:
            local = _add(local, back)
    if over_batch is not None:
        local = _add(
            local,
            _batch_average(over_batch, saved.sync, moments.batch.count)[0])
    grad_mean_in = grad_var_in = None
    if grad_in is not None:
        grad_mean_in, grad_var_in = grad_in.unbind()
    if local is not None:
        # sqmean_in = var_in + mean_in².
        local_mean, local_sq = local.unbind()
        grad_var_in = _add(grad_var_in, local_sq)
        grad_mean_in = torch.addcmul(
            _add(grad_mean_in, local_mean), saved.mean_in, local_sq, value=2)
    return (_full(grad_var_in, grads), _full(grad_mean_in, grads),
            torch.cat(grad_ratios, 1), grad_weight, grad_bias)


def _full(t: Tensor, like: Tensor) -> Tensor:
    # ``t`` broadcast to (N, C), the shape of ``like``'s last two dims.
    shape = like.shape[1:]
    return t if t.shape == shape else t.expand(shape)


def _add(total: Optional[Tensor], part: Tensor) -> Tensor:
    return part if total is None else total + part
