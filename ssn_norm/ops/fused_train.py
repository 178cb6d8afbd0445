"""Whole-layer formulas of SN/SSN for ``torch.compile``.

Each function here is plain tensor code over the rows ``r = (n, c)`` of the
input viewed as ``(N·C, L)`` and is compiled as one graph (dynamic shapes)
by :mod:`ssn_norm.ops.switchable_function`:

* :func:`var_mean_rows` and :func:`grad_input_rows`: the two row kernels of
  the general path;
* :func:`training_forward`: row moments, the IN/LN/BN mix
  (:mod:`ssn_norm.ops.fused_mix`) and ``y = x * scale + shift``;
* :func:`training_backward`: the row sums ``Σ g`` and ``Σ g·x``, the
  hand-derived backward of the mix and the input gradient.

One compiled call per direction replaces a few dozen small eager ops, the
fixed per-layer cost that dominated small maps.  The whole-layer formulas
take the input as ``(N, C, L)`` (index arithmetic on a flat row index
costs more than the fused loops themselves); their graphs are compiled
once for ``N > 1`` and once for ``N = 1``.  Released numerics throughout:
unbiased IN variance, LN and BN moments derived from the IN moments.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .fused_mix import combine, mix_grads, sample_terms

__all__ = [
    'grad_input_rows', 'stat_dtype', 'training_backward', 'training_forward',
    'var_mean_rows'
]


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics dtype: fp32 for fp16/bf16/fp32, fp64 for fp64."""
    return torch.promote_types(dtype, torch.float32)


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


def _terms(var_in: Tensor, mean_in: Tensor, using_bn: bool):
    sq_in, mean_ln, diff_ln = sample_terms(var_in, mean_in)
    means, diffs = [mean_in, mean_ln], [diff_ln]
    mean_bn = sq_bn = None
    if using_bn:
        mean_bn, sq_bn = mean_in.mean(0), sq_in.mean(0)
        means.append(mean_bn)
        diffs.append(sq_bn - mean_bn.square())
    variances = [var_in] + [d.clamp(min=0) for d in diffs]
    return means, variances, diffs, mean_bn, sq_bn


def training_forward(
    x: Tensor, mean_ratio: Tensor, var_ratio: Tensor, weight: Tensor,
    bias: Tensor, eps: float, using_bn: bool
) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor],
           Optional[Tensor]]:
    """SN/SSN in training on ``x`` (N, C, L), L > 1.

    Returns:
        The output (as ``x``), the IN variance and mean (N, C) for
        :func:`training_backward`, and the BN mean, second moment and
        (clamped) variance (C,) for the running statistics (None without
        BN).
    """
    var_in, mean_in = var_mean_rows(x)
    dtype = var_in.dtype
    means, variances, _, mean_bn, sq_bn = _terms(var_in, mean_in, using_bn)
    ratios = torch.stack([mean_ratio, var_ratio]).to(dtype)
    _, _, scale, shift = combine(ratios, means, variances, weight, bias, eps)
    out = x.to(dtype) * scale.unsqueeze(-1) + shift.unsqueeze(-1)
    var_bn = variances[2] if using_bn else None
    return out.to(x.dtype), var_in, mean_in, mean_bn, sq_bn, var_bn


def training_backward(
        grad: Tensor, x: Tensor, var_in: Tensor, mean_in: Tensor,
        mean_ratio: Tensor, var_ratio: Tensor, weight: Tensor, eps: float,
        using_bn: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of :func:`training_forward` for the output gradient ``grad``.

    The mix is recomputed from the saved IN moments (``O(N·C)``), so only
    ``x`` is kept at full size, as in BatchNorm.

    Returns:
        Gradients of ``x`` (as ``x``), of the mean and variance ratios (K,)
        and of weight and bias (C,), in the statistics dtype except the
        first.
    """
    length = x.shape[-1]
    dtype = var_in.dtype
    xs, gs = x.to(dtype), grad.to(dtype)
    sum_g, sum_gx = gs.sum(-1), (gs * xs).sum(-1)
    means, variances, diffs, _, _ = _terms(var_in, mean_in, using_bn)
    ratios = torch.stack([mean_ratio, var_ratio]).to(dtype)
    mean, inv_std, scale, _ = combine(ratios, means, variances, weight, None,
                                      eps)
    masks = [d >= 0 for d in diffs]  # clamp(min=0) passes gradient at 0
    (grad_var_in, grad_mean_in, grad_ratios, grad_weight,
     grad_bias) = mix_grads(ratios, means, variances, masks, mean, inv_std,
                            scale, sum_g, sum_gx)
    # ∂v/∂x = 2(x - m)/(L - 1), ∂m/∂x = 1/L.
    grad_x = grad_input_rows(grad, x, scale, mean_in,
                             grad_var_in * (2.0 / (length - 1)),
                             grad_mean_in / length)
    return grad_x, grad_ratios[0], grad_ratios[1], grad_weight, grad_bias
