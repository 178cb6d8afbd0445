"""The one definition of SN/SSN statistics and their mix.

Every path of the library computes its moments here: the layers' reference
(``autograd``) path and their no-gradient path, the hand-differentiated
training mix (:mod:`ssn_norm.ops.fused_mix`) and the compiled whole-layer
graphs (:mod:`ssn_norm.ops.fused_train`), SyncSN's batch moments, batch
statistics (:mod:`ssn_norm.batch_stats`) and deployment
(:mod:`ssn_norm.deploy`).  Pure PyTorch.

Numerics (the released SN code, so its checkpoints evaluate identically):

* IN moments per row ``(n, c)``: the mean and the *unbiased* variance; a row
  of one element has variance 0 (not NaN).
* Every other member derives its moments from the IN moments with one
  reduction ``R`` of the ``(N, C)`` IN mean and second moment
  ``var_in + mean_in²``: ``mean = R(mean_in)``,
  ``var = clamp(R(var_in + mean_in²) - mean², 0)`` (the clamp only guards
  against rounding; its gradient passes where the difference is ≥ 0).
  LN reduces over channels, BN over the batch (or, in SyncSN, over every
  process: :class:`MomentSpec.batch_moments`); in eval BN takes the running
  statistics instead.
* The mixed mean and variance are ``Σ_k ratio_k · moment_k`` (broadcast to
  ``(N, C)``), then ``y = x · scale + shift`` with
  ``scale = γ / sqrt(var + eps)``, ``shift = β - mean · scale``.
* dtype: statistics, mix and factors in :func:`stat_dtype` of the input
  (fp32 for fp16/bf16/fp32, fp64 for fp64); the output has the input's.

The members are the ordered table :data:`MEMBERS` (IN, LN, BN) plus GN,
whose moments are per sample over each group of ``C / gn_groups``
channels, derived from the IN moments as LN's are.  A layer mixes any
non-empty ordered subset, its :func:`member_table`; each :class:`Member`'s
``reduce`` maps the ``(N, C)`` IN moments to a tensor broadcastable to
``(N, C)`` and its ``expand`` is the transpose of that map (for the
hand-derived backward); the layer's logits, the forward, the fused
backward and deployment follow from the table.

Ratios are ``(K,)`` per moment (every channel shares them), or, for group
SN, ``(K, C)``: channel ``c`` mixes with the ratios of its channel group
(:func:`channel_ratios`); the gradient of a ``(K, C)`` ratio is summed
over the samples only (the group sum is the expansion's own backward).
"""
from functools import lru_cache, partial
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    'MEMBERS', 'Member', 'MomentSpec', 'Moments', 'NAMES', 'channel_ratios',
    'check_normalizers', 'member_grads', 'member_moments', 'member_table',
    'members', 'mix', 'normalize_reference', 'names', 'scale_shift', 'select',
    'stat_dtype', 'var_mean_in', 'variance'
]


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics dtype: fp32 for fp16/bf16/fp32, fp64 for fp64."""
    return torch.promote_types(dtype, torch.float32)


def var_mean_in(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Unbiased variance and mean over the last dim of ``x``, in
    :func:`stat_dtype`; a single element has variance 0 (the released IN
    numerics).  Differentiable; the reference the fast kernels match."""
    xs = x.to(stat_dtype(x.dtype))
    return torch.var_mean(xs, dim=-1, correction=int(x.shape[-1] > 1))


def variance(mean: Tensor, sqmean: Tensor) -> Tensor:
    """``clamp(sqmean - mean², 0)``: a variance from its first two moments.

    The clamp only absorbs rounding (a true variance is ≥ 0).
    """
    return (sqmean - mean.square()).clamp(min=0)


def _channels(t: Tensor) -> Tensor:
    return t.mean(1, keepdim=True)


def _expand_channels(grad: Tensor, like: Tensor) -> Tensor:
    return (grad / like.shape[1]).expand_as(like)


def _channel_groups(groups: int, t: Tensor) -> Tensor:
    # Mean over each of ``groups`` consecutive channel groups, per sample,
    # repeated over the group's channels: (N, C) -> (N, C).
    grouped = t.unflatten(1, (groups, -1))
    return grouped.mean(-1, keepdim=True).expand_as(grouped).flatten(1)


def _expand_channel_groups(groups: int, grad: Tensor, like: Tensor) -> Tensor:
    grouped = grad.unflatten(1, (groups, -1))
    total = grouped.sum(-1, keepdim=True) / grouped.shape[-1]
    return total.expand_as(grouped).flatten(1).expand_as(like)


def _batch(t: Tensor) -> Tensor:
    return t.mean(0)


def _expand_batch(grad: Tensor, like: Tensor) -> Tensor:
    return (grad / like.shape[0]).expand_as(like)


class Member(NamedTuple):
    """One normaliser of the mix.

    Attributes:
        name: as in the logs, deploy files and plots (``'IN'``, ...).
        reduce: maps an ``(N, C)`` IN moment to this member's moment,
            broadcastable to ``(N, C)``; None for IN itself.
        expand: the transpose of ``reduce``: ``expand(grad, like)`` maps a
            gradient of ``reduce``'s output to ``like``'s ``(N, C)``.
        batch: True for a member over the batch (BN): replaced by the
            running statistics in eval, by a layer's ``batch_moments``
            hook where given, and dropped with ``using_bn=False``.  The
            only batch member is BN.
        groups: ``reduce`` declared for kernels that cannot call it (the
            C++ training kernel, :mod:`ssn_norm.ops.native`): 0 for the
            mean over the batch, ``G > 0`` for the mean per sample over
            ``G`` groups of consecutive channels (LN: 1, GN:
            ``gn_groups``); None (the default) if ``reduce`` is neither,
            and then only the Python paths run the member.  Ignored for
            IN (``reduce`` None).
    """

    name: str
    reduce: Optional[Callable[[Tensor], Tensor]]
    expand: Optional[Callable[[Tensor, Tensor], Tensor]]
    batch: bool
    groups: Optional[int] = None


#: The normalisers, in the order of the ratio logits.
MEMBERS: Tuple[Member, ...] = (
    Member('IN', None, None, False),
    Member('LN', _channels, _expand_channels, False, groups=1),
    Member('BN', _batch, _expand_batch, True, groups=0),
)

#: Every member name a layer may mix: :data:`MEMBERS`' and GN.
NAMES: Tuple[str, ...] = ('IN', 'LN', 'BN', 'GN')


def check_normalizers(normalizers,
                      gn_groups: Optional[int] = None,
                      num_features: Optional[int] = None) -> Tuple[str, ...]:
    """``normalizers`` as a tuple of names, or a ``ValueError`` naming the
    fix: the set must be a non-empty sequence of distinct names of
    :data:`NAMES`; ``gn_groups`` is given exactly when 'GN' is a member,
    is a positive int and divides ``num_features`` (when given)."""
    if isinstance(normalizers, str) or not isinstance(normalizers,
                                                      (tuple, list)):
        raise ValueError('normalizers must be a tuple of names from '
                         f'{NAMES}, e.g. (\'IN\', \'LN\', \'BN\'), got '
                         f'{normalizers!r}')
    normalizers = tuple(normalizers)
    if not normalizers:
        raise ValueError('normalizers must name at least one of '
                         f'{NAMES}, got an empty set')
    for name in normalizers:
        if name not in NAMES:
            raise ValueError(f'unknown normalizer {name!r} in normalizers='
                             f'{normalizers}; valid ones are {NAMES}')
        if normalizers.count(name) > 1:
            raise ValueError(f'normalizer {name!r} is repeated in '
                             f'normalizers={normalizers}; name each once')
    if 'GN' in normalizers:
        if (gn_groups is None or isinstance(gn_groups, bool)
                or not isinstance(gn_groups, int) or gn_groups <= 0):
            raise ValueError(
                'normalizers include \'GN\': gn_groups must be a positive '
                f'int (channels per GN group = C / gn_groups), got '
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
    """The members of a layer mixing ``normalizers`` (in logit order).

    Guarantees: the same configuration gives the identical tuple (so
    compiled graphs that take it as a constant are reused across layers);
    IN, LN and BN are :data:`MEMBERS`' entries as they are at the call.
    Call :func:`check_normalizers` first: names are not checked here.
    """
    return _member_table(MEMBERS, tuple(normalizers), gn_groups)


@lru_cache(maxsize=None)
def _member_table(base: Tuple[Member, ...], normalizers: Tuple[str, ...],
                  gn_groups: Optional[int]) -> Tuple[Member, ...]:
    by_name = {m.name: m for m in base}
    table = []
    for name in normalizers:
        if name == 'GN':
            table.append(
                Member(
                    'GN',
                    partial(_channel_groups, gn_groups),
                    partial(_expand_channel_groups, gn_groups),
                    False,
                    groups=gn_groups))
        else:
            table.append(by_name[name])
    return tuple(table)


def members(using_bn: bool = True) -> Tuple[Member, ...]:
    """The members of :data:`MEMBERS` a layer mixes: all, or those not
    over the batch."""
    return tuple(m for m in MEMBERS if using_bn or not m.batch)


def names(using_bn: bool = True) -> Tuple[str, ...]:
    """Names of :func:`members`, in logit order."""
    return tuple(m.name for m in members(using_bn))


def channel_ratios(ratios: Tensor, channels: int) -> Tensor:
    """Ratios as the mix takes them: ``(K,)`` as they are; group ratios
    ``(G, K)`` as ``(K, C)``, channel ``c`` holding the row of its group
    ``c // (C / G)``.  Differentiable (the backward sums over each group's
    channels)."""
    if ratios.dim() == 1:
        return ratios
    return ratios.t().repeat_interleave(channels // ratios.shape[0], dim=1)


#: ``(mean_in, sqmean_in) -> (mean_bn, sqmean_bn)``: (N, C) -> (C,) each.
BatchMomentsFn = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]
#: ``record(mean_bn, sqmean_bn, var_bn)``, each (C,) and detached.
RecordFn = Callable[[Tensor, Tensor, Tensor], None]


class MomentSpec(NamedTuple):
    """What a layer's forward needs besides its tensors: data, no callback
    into the layer's numerics.

    Attributes:
        members: the layer's :func:`member_table`, in logit order.
        training: batch statistics (True) or running ones (False).
        running: ``(running_mean, running_var)`` (C,) used in eval.
        selected: ``(mean_idx, var_idx)`` of a frozen one-hot layer in
            eval (only those moments are used), else None.
        record: called once per training forward with the detached batch
            mean, second moment and variance (running statistics, batch
            statistics recording); None: nothing to record.
        batch_moments: differentiable replacement of the batch member's
            reduction (SyncSN's all-reduce); None: the member's own.
    """

    members: Tuple[Member, ...]
    training: bool
    running: Optional[Tuple[Tensor, Tensor]] = None
    selected: Optional[Tuple[int, int]] = None
    record: Optional[RecordFn] = None
    batch_moments: Optional[BatchMomentsFn] = None

    @property
    def using_bn(self) -> bool:
        """Whether a batch member (BN) is mixed in."""
        return any(m.batch for m in self.members)


class Moments(NamedTuple):
    """Every member's moments, in the table's order.

    ``diffs[k]``: the unclamped ``R(sqmean_in) - mean²`` of a derived member
    (None for IN and for running statistics); ``batch``: the batch
    member's ``(mean, sqmean, var)`` for recording, or None; ``mean_in``:
    the IN mean (N, C), whether or not IN is a member.
    """

    means: List[Tensor]
    variances: List[Tensor]
    diffs: List[Optional[Tensor]]
    batch: Optional[Tuple[Tensor, Tensor, Tensor]]
    mean_in: Tensor


def member_moments(var_in: Tensor,
                   mean_in: Tensor,
                   table: Tuple[Member, ...],
                   running: Optional[Tuple[Tensor, Tensor]] = None,
                   batch_moments: Optional[BatchMomentsFn] = None) -> Moments:
    """Every member's mean and variance from the IN moments (N, C).

    Plain differentiable ops (also traced by ``torch.compile`` and
    ``torch.fx``).  ``table``: the members (:func:`member_table`);
    ``running`` replaces batch members by the running statistics (eval);
    ``batch_moments`` replaces their reduction.
    """
    sqmean_in = torch.addcmul(var_in, mean_in, mean_in)
    means, variances, diffs, batch = [], [], [], None
    for member in table:
        if member.reduce is None:
            means.append(mean_in)
            variances.append(var_in)
            diffs.append(None)
            continue
        if member.batch and running is not None:
            means.append(running[0].to(var_in.dtype))
            variances.append(running[1].to(var_in.dtype))
            diffs.append(None)
            continue
        if member.batch and batch_moments is not None:
            mean, sqmean = batch_moments(mean_in, sqmean_in)
        else:
            mean, sqmean = member.reduce(mean_in), member.reduce(sqmean_in)
        diff = sqmean - mean.square()
        means.append(mean)
        variances.append(diff.clamp(min=0))
        diffs.append(diff)
        if member.batch:
            batch = (mean, sqmean, variances[-1])
    return Moments(means, variances, diffs, batch, mean_in)


def mix(ratios: Tensor, terms: Sequence[Tensor]) -> Tensor:
    """``Σ_k ratios[k] · terms[k]``; ``ratios`` (K,) or per channel (K, C).

    The result broadcasts to (N, C); it is (N, C) whenever a term or the
    ratios are per channel and per sample together (IN, GN, group ratios
    with LN), else (C,) or (N, 1).
    """
    out = terms[0] * ratios[0]
    for k in range(1, len(terms)):
        out = out + terms[k] * ratios[k]
    return out


def select(moments: Moments, spec: MomentSpec, mean_ratio: Optional[Tensor],
           var_ratio: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """The layer's mean and variance: the selected members of a frozen
    layer in eval, else the mix by the ratios (in the moments' dtype)."""
    if spec.selected is not None and not spec.training:
        mean_idx, var_idx = spec.selected
        return moments.means[mean_idx], moments.variances[var_idx]
    dtype = moments.variances[0].dtype
    return (mix(mean_ratio.to(dtype),
                moments.means), mix(var_ratio.to(dtype), moments.variances))


def scale_shift(mean: Tensor, var: Tensor, weight: Tensor,
                bias: Optional[Tensor],
                eps: float) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """``1/sqrt(var + eps)``, ``scale`` and ``shift`` (None without bias)
    of ``y = x * scale + shift``, in ``var``'s dtype."""
    inv_std = torch.rsqrt(var + eps)
    scale = weight.to(inv_std.dtype) * inv_std
    if bias is None:
        return inv_std, scale, None
    return inv_std, scale, bias.to(inv_std.dtype) - mean * scale


def normalize_reference(x3: Tensor, weight: Tensor, bias: Tensor,
                        mean_ratio: Optional[Tensor],
                        var_ratio: Optional[Tensor], spec: MomentSpec,
                        eps: float) -> Tensor:
    """SN/SSN of ``x3`` (N, C, L) in plain differentiable ops.

    The reference every backend is tested against, and the path of outer
    tracers and of double backward.  ``spec.record`` is called here (pass
    a spec without it to replay a forward).
    """
    sample_needed = not (spec.selected is not None and not spec.training
                         and all(spec.members[i].batch for i in spec.selected))
    if sample_needed:
        var_in, mean_in = var_mean_in(x3)
    else:
        # Only running statistics are used: no pass over the input.
        dtype = stat_dtype(x3.dtype)
        var_in = mean_in = x3.new_zeros(x3.shape[:2], dtype=dtype)
    running = spec.running if spec.using_bn and not spec.training else None
    moments = member_moments(var_in, mean_in, spec.members, running,
                             spec.batch_moments if spec.training else None)
    if spec.record is not None and moments.batch is not None:
        spec.record(*(t.detach() for t in moments.batch))
    mean, var = select(moments, spec, mean_ratio, var_ratio)
    _, scale, shift = scale_shift(mean, var, weight, bias, eps)
    # A frozen SSN may mix a per-sample mean with a per-channel variance.
    scale, shift = torch.atleast_2d(scale), torch.atleast_2d(shift)
    out = x3.to(scale.dtype) * scale.unsqueeze(-1) + shift.unsqueeze(-1)
    return out.to(x3.dtype)


#: ``batch_grads(grad_mean_bn, grad_sqmean_bn)`` -> gradients of the IN
#: mean and second moment (N, C) through a ``batch_moments`` hook.
BatchGradsFn = Callable[[Tensor, Tensor], Sequence[Optional[Tensor]]]


def member_grads(
    ratios: Tensor,
    moments: Moments,
    table: Tuple[Member, ...],
    mean: Tensor,
    inv_std: Tensor,
    scale: Tensor,
    sum_g: Tensor,
    sum_gx: Tensor,
    batch_grads: Optional[BatchGradsFn] = None
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The hand-derived backward of :func:`member_moments` + :func:`mix` +
    :func:`scale_shift` in training, from ``∂shift = Σ g`` and
    ``∂scale = Σ g·x`` per row (N, C).

    Pure tensor code (also traced by ``torch.compile``), written over the
    member ``table``: each member's ``expand`` carries its gradient back to
    the IN moments (``batch_grads`` does for a batch member computed by a
    ``batch_moments`` hook).  ``ratios`` is (2, K), or (2, K, C) per channel
    (group SN), whose gradients are then summed over the samples only.

    Returns:
        Gradients of the IN variance and mean (N, C), of the ratios
        (as ``ratios``) and of weight and bias (C,).
    """
    mean_r, var_r = ratios.unbind()
    per_channel = ratios.dim() == 3
    grad_mean = -sum_g * scale
    grad_scale = sum_gx - sum_g * mean
    grad_bias = sum_g.sum(0)
    grad_weight = (grad_scale * inv_std).sum(0)
    # d rsqrt(v + eps) = -1/2 (v + eps)^(-3/2) dv.
    grad_var = grad_scale * scale * inv_std.square() * -0.5
    mean_in = moments.mean_in
    grad_mean_in = grad_var_in = grad_sq_in = None
    mean_parts, var_parts = [], []
    for k, member in enumerate(table):
        term_mean, term_var = moments.means[k], moments.variances[k]
        if per_channel:
            # term (N, 1) or (C,) times ratios (C,): reduce after weighting.
            mean_parts.append(
                (grad_mean * term_mean).sum_to_size(mean_r[k].shape))
            var_parts.append((grad_var * term_var).sum_to_size(var_r[k].shape))
            g_mean = (grad_mean * mean_r[k]).sum_to_size(term_mean.shape)
            g_var = (grad_var * var_r[k]).sum_to_size(term_var.shape)
        else:
            g_mean = grad_mean.sum_to_size(term_mean.shape)
            g_var = grad_var.sum_to_size(term_var.shape)
            mean_parts.append((g_mean * term_mean).sum())
            var_parts.append((g_var * term_var).sum())
            g_mean, g_var = g_mean * mean_r[k], g_var * var_r[k]
        if member.reduce is None:
            grad_mean_in = _add(grad_mean_in, g_mean)
            grad_var_in = _add(grad_var_in, g_var)
            continue
        # var = clamp(sqmean - mean², 0), sqmean and mean reduced from IN.
        g_sq = g_var * (moments.diffs[k] >= 0)
        g_mean = g_mean - 2 * term_mean * g_sq
        if member.batch and batch_grads is not None:
            found = batch_grads(g_mean, g_sq)
            grad_mean_in = _add(grad_mean_in, found[0])
            grad_sq_in = _add(grad_sq_in, found[1])
        else:
            grad_mean_in = _add(grad_mean_in, member.expand(g_mean, mean_in))
            grad_sq_in = _add(grad_sq_in, member.expand(g_sq, mean_in))
    grad_ratios = torch.stack(
        [torch.stack(mean_parts),
         torch.stack(var_parts)])
    if grad_sq_in is not None:
        # sqmean_in = var_in + mean_in².
        grad_var_in = _add(grad_var_in, grad_sq_in)
        grad_mean_in = torch.addcmul(
            grad_mean_in, mean_in, grad_sq_in, value=2)
    return grad_var_in, grad_mean_in, grad_ratios, grad_weight, grad_bias


def _add(total: Optional[Tensor], part: Optional[Tensor]) -> Optional[Tensor]:
    if part is None:
        return total
    return part if total is None else total + part
