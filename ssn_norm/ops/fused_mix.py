"""The ``O(N·C)`` training mix of SN/SSN with a hand-derived backward.

Recorded as ordinary autograd ops, mixing the members' moments and turning
them into ``scale``/``shift`` is a few dozen tiny ops forward and as many
backward, a fixed cost of about half a millisecond per layer and step on
CPU that dominates small maps.  Here the forward is
:func:`~ssn_norm.ops.moments.member_moments` run without autograd and the
backward is :func:`~ssn_norm.ops.moments.member_grads`, so no autograd
graph is recorded for this part (except through a ``batch_moments`` hook,
e.g. SyncSN's all-reduce, which stays differentiable as it is).  The
numerics are those of :mod:`ssn_norm.ops.moments`.
"""
from functools import partial
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .moments import (BatchMomentsFn, Member, Moments, MomentSpec,
                      member_grads, member_moments, mix, scale_shift)

__all__ = ['mix_backward', 'mix_forward']


class _Saved(NamedTuple):
    ratios: Tensor  # (2, K) or (2, K, C): mean ratios, variance ratios
    moments: Moments
    table: Tuple[Member, ...]
    mean: Tensor
    inv_std: Tensor
    scale: Tensor
    bn_graph: Optional[Tuple[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor]]]


def _recording(batch_moments: BatchMomentsFn, graphs: list) -> BatchMomentsFn:
    """``batch_moments`` on detached leaves, its small graph kept in
    ``graphs`` for :func:`mix_backward` (the hook may communicate, as
    SyncSN's all-reduce does: it is differentiated as it is)."""

    def hook(mean: Tensor, sqmean: Tensor) -> Tuple[Tensor, Tensor]:
        leaves = (mean.detach().requires_grad_(),
                  sqmean.detach().requires_grad_())
        with torch.enable_grad():
            outs = batch_moments(*leaves)
        graphs.append((leaves, outs))
        return tuple(t.detach() for t in outs)

    return hook


def mix_forward(var_in: Tensor, mean_in: Tensor, mean_ratio: Tensor,
                var_ratio: Tensor, weight: Tensor, bias: Tensor, eps: float,
                spec: MomentSpec) -> Tuple[Tensor, Tensor, _Saved]:
    """Mixed ``scale`` and ``shift`` (N, C) of ``y = x * scale + shift``.

    Args:
        var_in, mean_in: per-sample (IN) unbiased variance and mean (N, C),
            in the statistics dtype.
        mean_ratio, var_ratio: (K,) ratios over the members, or (K, C)
            per channel (group SN).
        weight, bias: (C,) affine parameters.
        eps: added to the mixed variance.
        spec: a training :class:`~ssn_norm.ops.moments.MomentSpec`;
            ``spec.record`` is called here.

    Returns:
        ``scale``, ``shift`` (N, C) in ``var_in``'s dtype, and what
        :func:`mix_backward` needs.  No autograd graph is recorded outside
        ``spec.batch_moments``.
    """
    dtype = var_in.dtype
    graphs = []
    hook = None
    if spec.using_bn and spec.batch_moments is not None:
        hook = _recording(spec.batch_moments, graphs)
    with torch.no_grad():
        moments = member_moments(var_in, mean_in, spec.members, None, hook)
        if spec.record is not None and moments.batch is not None:
            spec.record(*moments.batch)
        ratios = torch.stack([mean_ratio, var_ratio]).to(dtype)
        mean = mix(ratios[0], moments.means)
        var = mix(ratios[1], moments.variances)
        inv_std, scale, shift = scale_shift(mean, var, weight, bias, eps)
        # A set without a per-sample, per-channel member mixes to (C,)
        # or (N, 1): the affine pass takes one factor per row.
        scale, shift = scale.expand_as(var_in), shift.expand_as(var_in)
    saved = _Saved(ratios, moments, spec.members, mean, inv_std, scale,
                   graphs[0] if graphs else None)
    return scale, shift, saved


def _graph_grads(leaves: Tuple[Tensor, Tensor], outs: Tuple[Tensor, Tensor],
                 grad_mean_bn: Tensor, grad_sq_bn: Tensor) -> tuple:
    """Gradients of a recorded ``batch_moments`` graph at its leaves; kept
    for a second backward (``retain_graph=True`` outside)."""
    with torch.enable_grad():
        return torch.autograd.grad(
            outs,
            leaves, (grad_mean_bn, grad_sq_bn),
            retain_graph=True,
            allow_unused=True)


@torch.no_grad()
def mix_backward(
        saved: _Saved, sum_g: Tensor, sum_gx: Tensor
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the mix from ``∂shift = Σ g`` and ``∂scale = Σ g·x``.

    Args:
        saved: from :func:`mix_forward`.
        sum_g, sum_gx: (N, C) per-row sums of the output gradient and of it
            times the input.

    Returns:
        Gradients of the IN variance and mean (N, C), of the mean and
        variance ratios (as given) and of weight and bias (C,), all in the
        statistics dtype.
    """
    batch_grads = None
    if saved.bn_graph is not None:
        batch_grads = partial(_graph_grads, *saved.bn_graph)
    (grad_var_in, grad_mean_in, grad_ratios, grad_weight,
     grad_bias) = member_grads(saved.ratios, saved.moments, saved.table,
                               saved.mean, saved.inv_std, saved.scale, sum_g,
                               sum_gx, batch_grads)
    return (grad_var_in, grad_mean_in, grad_ratios[0], grad_ratios[1],
            grad_weight, grad_bias)
