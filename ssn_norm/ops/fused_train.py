"""Whole-layer formulas of SN/SSN for ``torch.compile``.

Each function here is plain tensor code over the rows ``r = (n, c)`` of the
input viewed as ``(N·C, L)`` and is compiled as one graph (dynamic shapes)
by :mod:`ssn_norm.ops.switchable_function`:

* :func:`var_mean_rows` and :func:`grad_input_rows`: the two row kernels of
  the general path;
* :func:`training_forward`: row moments, the members' moments and their
  mix (:mod:`ssn_norm.ops.moments`) and ``y = x * scale + shift``;
* :func:`training_backward`: the row sums ``Σ g`` and ``Σ g·x``, the
  hand-derived backward of the mix
  (:func:`~ssn_norm.ops.moments.member_grads`) and the input gradient.

One compiled call per direction replaces a few dozen small eager ops, the
fixed per-layer cost that dominated small maps.  The whole-layer formulas
take the input as ``(N, C, L)`` (index arithmetic on a flat row index
costs more than the fused loops themselves); their graphs are compiled
once for ``N > 1`` and once for ``N = 1``.  The numerics are those of
:mod:`ssn_norm.ops.moments`; only the row kernels are written here.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .moments import member_grads, member_moments, mix, scale_shift, stat_dtype

__all__ = [
    'grad_input_rows', 'training_backward', 'training_forward', 'var_mean_rows'
]


def var_mean_rows(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Unbiased variance and mean of each row of ``x`` (R, L), L > 1.

    Two passes over each (cached) row: more accurate than Welford's update
    and, compiled, several times faster on short rows.
    """
    xs = x.to(stat_dtype(x.dtype))
    length = xs.shape[-1]
    mean = xs.sum(-1) / length
    var = (xs - mean.unsqueeze(-1)).square().sum(-1) / max(length - 1, 1)
    return var, mean


def grad_input_rows(grad: Tensor, x: Tensor, scale: Tensor, centre: Tensor,
                    coef: Tensor, const: Tensor) -> Tensor:
    """``grad·scale + (x - centre)·coef + const`` per row, in ``x``'s dtype.

    Centred: where the variance is ~0 (a constant row) ``coef`` is huge and
    meaningless, but ``x - centre`` is 0.
    """
    dtype = scale.dtype
    out = (
        grad.to(dtype) * scale.unsqueeze(-1) +
        (x.to(dtype) - centre.unsqueeze(-1)) * coef.unsqueeze(-1) +
        const.unsqueeze(-1))
    return out.to(x.dtype)


def training_forward(
    x: Tensor, mean_ratio: Tensor, var_ratio: Tensor, weight: Tensor,
    bias: Tensor, eps: float, table: tuple
) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor],
           Optional[Tensor]]:
    """SN/SSN in training on ``x`` (N, C, L), L > 1, mixing the members
    ``table`` (:func:`~ssn_norm.ops.moments.member_table`: one object per
    layer configuration, a constant of the compiled graph) with ratios
    (K,) or (K, C).

    Returns:
        The output (as ``x``), the IN variance and mean (N, C) for
        :func:`training_backward`, and the BN mean, second moment and
        (clamped) variance (C,) for the running statistics (None without
        BN).
    """
    var_in, mean_in = var_mean_rows(x)
    dtype = var_in.dtype
    moments = member_moments(var_in, mean_in, table)
    ratios = torch.stack([mean_ratio, var_ratio]).to(dtype)
    mean = mix(ratios[0], moments.means)
    _, scale, shift = scale_shift(mean, mix(ratios[1], moments.variances),
                                  weight, bias, eps)
    out = x.to(dtype) * scale.unsqueeze(-1) + shift.unsqueeze(-1)
    mean_bn, sq_bn, var_bn = moments.batch or (None, None, None)
    return out.to(x.dtype), var_in, mean_in, mean_bn, sq_bn, var_bn


def training_backward(
        grad: Tensor, x: Tensor, var_in: Tensor, mean_in: Tensor,
        mean_ratio: Tensor, var_ratio: Tensor, weight: Tensor, eps: float,
        table: tuple) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of :func:`training_forward` for the output gradient ``grad``.

    The mix is recomputed from the saved IN moments (``O(N·C)``), so only
    ``x`` is kept at full size, as in BatchNorm.

    Returns:
        Gradients of ``x`` (as ``x``), of the mean and variance ratios (as
        given) and of weight and bias (C,), in the statistics dtype except the
        first.
    """
    length = x.shape[-1]
    dtype = var_in.dtype
    xs, gs = x.to(dtype), grad.to(dtype)
    sum_g, sum_gx = gs.sum(-1), (gs * xs).sum(-1)
    moments = member_moments(var_in, mean_in, table)
    ratios = torch.stack([mean_ratio, var_ratio]).to(dtype)
    mean = mix(ratios[0], moments.means)
    inv_std, scale, _ = scale_shift(mean, mix(ratios[1], moments.variances),
                                    weight, None, eps)
    (grad_var_in, grad_mean_in, grad_ratios, grad_weight,
     grad_bias) = member_grads(ratios, moments, table, mean, inv_std, scale,
                               sum_g, sum_gx)
    # ∂v/∂x = 2(x - m)/(L - 1), ∂m/∂x = 1/L.
    grad_x = grad_input_rows(grad, x, scale, mean_in,
                             grad_var_in * (2.0 / (length - 1)),
                             grad_mean_in / length)
    return grad_x, grad_ratios[0], grad_ratios[1], grad_weight, grad_bias
