"""The ``O(N·C)`` training mix of SN/SSN with a hand-derived backward.

Recorded as ordinary autograd ops, mixing the IN/LN/BN moments and turning
them into ``scale``/``shift`` is ~45 tiny ops forward and as many backward,
a fixed cost of about half a millisecond per layer and step on CPU that
dominates small maps.  Here only the IN terms are full ``(N, C)`` tensors
(LN's ``(N, 1)`` and BN's ``(C,)`` broadcast), each statistic is mixed with
one small sum and one multiply-add, and the backward is written out by hand
reusing the row and column sums it needs anyway, so no autograd graph is
recorded
for this part (except through a :class:`TrainingMix` ``batch_moments``
hook, e.g. SyncSN's all-reduce, which stays differentiable as it is).

The numerics are those of the layer's generic mix (released SN): unbiased
IN variance, LN and BN moments derived from the IN moments as
``mean(var_in + mean_in²) - mean²`` clamped at 0.
"""
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    'TrainingMix', 'combine', 'mix_backward', 'mix_forward', 'mix_grads',
    'sample_terms'
]

#: ``(mean_in, sqmean_in) -> (mean_bn, sqmean_bn)``: (N, C) -> (C,) each.
BatchMomentsFn = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]


class TrainingMix(NamedTuple):
    """What the fused training mix needs from the layer.

    Attributes:
        using_bn: mix BN moments in (``K = 3``), else IN and LN (``K = 2``).
        record: called once per forward with the detached BN mean, second
            moment and variance, each (C,) (running statistics).
        batch_moments: differentiable hook for the BN moments; None means
            the plain mean over the batch, differentiated by hand.
    """

    using_bn: bool
    record: Optional[Callable[[Tensor, Tensor, Tensor], None]] = None
    batch_moments: Optional[BatchMomentsFn] = None


class _Saved(NamedTuple):
    ratios: Tensor  # (2, K): mean ratios, variance ratios
    means: List[Tensor]  # IN (N, C), LN (N, 1)[, BN (C,)]
    variances: List[Tensor]  # the same for the variances
    mean: Tensor
    inv_std: Tensor
    scale: Tensor
    masks: List[Tensor]  # where each derived variance was not clamped
    bn_graph: Optional[Tuple[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor]]]


def _mix(ratios: Tensor, terms: List[Tensor]) -> Tensor:
    """``Σ_k ratios[k] · terms[k]`` broadcast to the IN term's (N, C)."""
    small = terms[1] * ratios[1]
    if len(terms) > 2:
        small = small + terms[2] * ratios[2]
    return torch.addcmul(small, terms[0], ratios[0])


def _ratio_grads(grad: Tensor, grad_rows: Tensor, grad_cols: Tensor,
                 terms: List[Tensor]) -> Tensor:
    """(K,) gradient of :func:`_mix`'s ratios; row/column sums reused."""
    parts = [(grad * terms[0]).sum(), (grad_rows * terms[1]).sum()]
    if len(terms) > 2:
        parts.append(grad_cols.dot(terms[2]))
    return torch.stack(parts)


def sample_terms(var_in: Tensor,
                 mean_in: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """IN second moment (N, C), LN mean and unclamped variance (N, 1)."""
    sq_in = torch.addcmul(var_in, mean_in, mean_in)
    mean_ln = mean_in.mean(1, keepdim=True)
    return sq_in, mean_ln, sq_in.mean(1, keepdim=True) - mean_ln.square()


def combine(ratios: Tensor, means: List[Tensor], variances: List[Tensor],
            weight: Tensor, bias: Optional[Tensor],
            eps: float) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Mixed mean, ``1/sqrt(var + eps)``, ``scale`` and ``shift`` (N, C).

    Only the IN term is (N, C); LN (N, 1) and BN (C,) broadcast, so each
    mix is one small sum and one full-size multiply-add.  ``shift`` is None
    without ``bias``.
    """
    mean, var = (_mix(r, terms)
                 for r, terms in zip(ratios, (means, variances)))
    inv_std = torch.rsqrt(var + eps)
    scale = weight.to(inv_std.dtype) * inv_std
    if bias is None:
        return mean, inv_std, scale, None
    return mean, inv_std, scale, bias.to(inv_std.dtype) - mean * scale


def mix_forward(var_in: Tensor, mean_in: Tensor, mean_ratio: Tensor,
                var_ratio: Tensor, weight: Tensor, bias: Tensor, eps: float,
                spec: TrainingMix) -> Tuple[Tensor, Tensor, _Saved]:
    """Mixed ``scale`` and ``shift`` (N, C) of ``y = x * scale + shift``.

    Args:
        var_in, mean_in: per-sample (IN) unbiased variance and mean (N, C),
            in the statistics dtype.
        mean_ratio, var_ratio: (K,) ratios over IN, LN[, BN].
        weight, bias: (C,) affine parameters.
        eps: added to the mixed variance.
        spec: see :class:`TrainingMix`; ``spec.record`` is called here.

    Returns:
        ``scale``, ``shift`` (N, C) in ``var_in``'s dtype, and what
        :func:`mix_backward` needs.  No autograd graph is recorded outside
        ``spec.batch_moments``.
    """
    dtype = var_in.dtype
    with torch.no_grad():
        sq_in, mean_ln, diff_ln = sample_terms(var_in, mean_in)
        means, diffs = [mean_in, mean_ln], [diff_ln]
        bn_graph = None
    if spec.using_bn:
        if spec.batch_moments is None:
            mean_bn, sq_bn = mean_in.mean(0), sq_in.mean(0)
        else:
            # The hook may communicate (SyncSN): keep its own small graph.
            leaves = (mean_in.detach().requires_grad_(),
                      sq_in.detach().requires_grad_())
            with torch.enable_grad():
                outs = spec.batch_moments(*leaves)
            bn_graph = (leaves, outs)
            mean_bn, sq_bn = (t.detach() for t in outs)
        means.append(mean_bn)
        diffs.append(sq_bn - mean_bn.square())
    with torch.no_grad():
        variances = [var_in] + [d.clamp(min=0) for d in diffs]
        if spec.using_bn and spec.record is not None:
            spec.record(mean_bn, sq_bn, variances[2])
        ratios = torch.stack([mean_ratio, var_ratio]).to(dtype)
        mean, inv_std, scale, shift = combine(ratios, means, variances, weight,
                                              bias, eps)
    masks = [d >= 0 for d in diffs]  # clamp(min=0) passes gradient at 0
    saved = _Saved(ratios, means, variances, mean, inv_std, scale, masks,
                   bn_graph)
    return scale, shift, saved


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
        variance ratios (K,) and of weight and bias (C,), all in the
        statistics dtype.
    """
    batch_grads = None
    if saved.bn_graph is not None:
        leaves, outs = saved.bn_graph

        def hook_grads(grad_mean_bn, grad_sq_bn):
            with torch.enable_grad():
                return torch.autograd.grad(
                    outs,
                    leaves, (grad_mean_bn, grad_sq_bn),
                    retain_graph=True,
                    allow_unused=True)

        batch_grads = hook_grads
    (grad_var_in, grad_mean_in, grad_ratios, grad_weight,
     grad_bias) = mix_grads(saved.ratios, saved.means, saved.variances,
                            saved.masks, saved.mean, saved.inv_std,
                            saved.scale, sum_g, sum_gx, batch_grads)
    return (grad_var_in, grad_mean_in, grad_ratios[0], grad_ratios[1],
            grad_weight, grad_bias)


def mix_grads(
    ratios: Tensor,
    means: List[Tensor],
    variances: List[Tensor],
    masks: List[Tensor],
    mean: Tensor,
    inv_std: Tensor,
    scale: Tensor,
    sum_g: Tensor,
    sum_gx: Tensor,
    batch_grads: Optional[Callable[[Tensor, Tensor],
                                   Sequence[Optional[Tensor]]]] = None
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The hand-derived backward of :func:`sample_terms` + :func:`combine`.

    Pure tensor code (also traced by ``torch.compile``).  ``batch_grads``
    maps the gradients of the BN mean and second moment (C,) to those of
    the IN mean and second moment (None: the plain mean over the batch).

    Returns:
        Gradients of the IN variance and mean (N, C), of the ratios (2, K)
        and of weight and bias (C,).
    """
    num, channels = mean.shape
    mean_r, var_r = ratios.unbind()
    grad_mean = -sum_g * scale
    grad_scale = sum_gx - sum_g * mean
    grad_bias = sum_g.sum(0)
    grad_weight = (grad_scale * inv_std).sum(0)
    # d rsqrt(v + eps) = -1/2 (v + eps)^(-3/2) dv.
    grad_var = grad_scale * scale * inv_std.square() * -0.5
    mean_rows = grad_mean.sum(1, keepdim=True)
    var_rows = grad_var.sum(1, keepdim=True)
    mean_cols, var_cols = grad_mean.sum(0), grad_var.sum(0)
    grad_ratios = torch.stack([
        _ratio_grads(grad_mean, mean_rows, mean_cols, means),
        _ratio_grads(grad_var, var_rows, var_cols, variances)
    ])
    grad_mean_in = grad_mean * mean_r[0]
    grad_var_in = grad_var * var_r[0]
    # LN: mean over channels of the IN mean and second moment.
    grad_d = var_rows * var_r[1] * masks[0]
    grad_m = mean_rows * mean_r[1] - 2 * means[1] * grad_d
    grad_sq_in = (grad_d / channels).expand(num, channels)
    grad_mean_in = grad_mean_in + grad_m / channels
    if len(means) > 2:
        # BN: mean over the batch (or the layer's hook).
        grad_d = var_cols * var_r[2] * masks[1]
        grad_m = mean_cols * mean_r[2] - 2 * means[2] * grad_d
        if batch_grads is None:
            grad_mean_in = grad_mean_in + grad_m / num
            grad_sq_in = grad_sq_in + grad_d / num
        else:
            found = batch_grads(grad_m, grad_d)
            if found[0] is not None:
                grad_mean_in = grad_mean_in + found[0]
            if found[1] is not None:
                grad_sq_in = grad_sq_in + found[1]
    # sqmean_in = var_in + mean_in².
    grad_var_in = grad_var_in + grad_sq_in
    grad_mean_in = torch.addcmul(grad_mean_in, means[0], grad_sq_in, value=2)
    return grad_var_in, grad_mean_in, grad_ratios, grad_weight, grad_bias
