"""The switchable-norm autograd Function and the one entry the layers call.

:func:`switchable_norm` takes the input, the layer's tensors and a
:class:`~ssn_norm.ops.moments.MomentSpec` (what the layer decided: mode,
running statistics, a frozen selection, the recording and batch-moment
hooks) and picks one path.  All numerics come from
:mod:`ssn_norm.ops.moments`; backend state and compilation from
:mod:`ssn_norm.ops.backend`.

Which path runs when:

=========================================  ==================================
case                                       path
=========================================  ==================================
backend ``autograd``, or an outer tracer   reference: plain autograd ops
(``torch.compile``, ONNX export)           (``moments.normalize_reference``)
eval, frozen on BN for mean and variance   one native BatchNorm inference
                                           (:func:`batch_norm_inference`)
eval, frozen on LN for mean and variance,  the C++ kernel
no gradient, CPU fp32/fp64, kernel built   (:mod:`ssn_norm.ops.native`)
no gradient wanted (other cases)           ``compiled`` on CPU as above: one
                                           C++ call; else row moments
                                           kernel, mix, one affine pass
                                           (:func:`_no_grad`)
gradient wanted, eval                      reference (as ``autograd``)
gradient wanted, training, ``compiled``,   :class:`SwitchableNormFunction`,
CPU fp32/fp64, C++ kernels built, no       whole layer: one C++ call per
``batch_moments`` hook, members declared   direction (:mod:`.native`)
(``Member.groups``)
gradient wanted, training, ``compiled``    :class:`SwitchableNormFunction`,
otherwise, after its warm-up, input ≥      whole layer: one compiled graph
``MIN_COMPILED_NUMEL``, no                 per direction (``fused_train``)
``batch_moments`` hook
gradient wanted, training, otherwise       :class:`SwitchableNormFunction`,
(``eager``, CUDA, fp16/bf16, SyncSN        row kernels + hand-differentiated
across processes)                          mix (``fused_mix``)
=========================================  ==================================

In every Function path everything that touches all ``N×C×L`` elements is
one of four passes over the rows ``r = (n, c)`` of ``x`` viewed as
``(N·C, L)``: (1) per-row mean and unbiased variance; (2)
``y = x * scale + shift``; (3) backward: per-row ``Σ g`` and ``Σ g·x``;
(4) backward: ``dx = g * scale + (x - mean) * coef + const``.  The C++
path runs them inside its two calls; on the row-kernel path 2 and 3 are
native BatchNorm kernels on a ``(1, N·C, L)`` view (:func:`_affine`), 1
and 4 depend on the backend.  Only the input is saved at full size, as in
BatchNorm.

Double backward (``create_graph=True``) is exact on every backend: grad
mode is on inside a backward exactly when ``create_graph`` is, and then the
backward re-runs the reference on the saved inputs (without recording
running statistics again) and differentiates it with ``create_graph=True``.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backend, native
from .backend import BACKENDS, alias, get_backend, set_backend, use_backend
from .fused_mix import mix_backward, mix_forward
from .moments import (MomentSpec, member_moments, normalize_reference,
                      scale_shift, select, stat_dtype)

__all__ = [
    'BACKENDS', 'MomentSpec', 'SwitchableNormFunction', 'batch_norm_inference',
    'get_backend', 'set_backend', 'switchable_norm', 'use_backend'
]


# Native BatchNorm kernels on a (1, R, L) view treat each row as a channel.
# In inference mode with mean 0, variance 1 and eps 0 (1/sqrt(1) is exactly
# 1) the forward is ``x * weight + bias`` and the backward's weight and bias
# gradients are ``Σ g·x`` and ``Σ g``: one vectorised pass each, faster
# than compiled code, no compiler needed, fp16/bf16 input with fp32 factors.
def _affine(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``x * scale + shift`` per row, in ``scale``'s dtype, as ``x``."""
    zeros, ones = _zeros_ones(scale)
    return torch.batch_norm(
        x.unsqueeze(0), scale, shift, zeros, ones, False, 0.0, 0.0,
        False).squeeze(0)


def _grad_sums(grad: Tensor, x: Tensor,
               dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Per-row ``Σ g`` and ``Σ g·x``, in ``dtype``."""
    zeros, ones = _zeros_ones(x.new_empty(x.shape[0], dtype=dtype))
    _, sum_gx, sum_g = torch.ops.aten.native_batch_norm_backward(
        grad.unsqueeze(0), x.unsqueeze(0), ones, zeros, ones, None, None,
        False, 0.0, [False, True, True])
    return sum_g, sum_gx


def _zeros_ones(like: Tensor) -> Tuple[Tensor, Tensor]:
    return torch.zeros_like(like), torch.ones_like(like)


def batch_norm_inference(x: Tensor, running_mean: Tensor, running_var: Tensor,
                         weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """``weight * (x - running_mean) / sqrt(running_var + eps) + bias``.

    One native BatchNorm-inference pass (foldable into a preceding conv)
    when the statistics and parameters are in the statistics dtype of ``x``
    (fp32 for fp16/bf16/fp32 input); otherwise the same formula in that
    dtype.  The output has ``x``'s dtype; differentiable.
    """
    dtype = stat_dtype(x.dtype)
    if all(t.dtype == dtype
           for t in (running_mean, running_var, weight, bias)):
        return F.batch_norm(x, running_mean, running_var, weight, bias, False,
                            0.0, eps)
    scale = weight.to(dtype) * torch.rsqrt(running_var.to(dtype) + eps)
    shift = bias.to(dtype) - running_mean.to(dtype) * scale
    view = (1, -1) + (1, ) * (x.dim() - 2)
    return (x.to(dtype) * scale.view(view) + shift.view(view)).to(x.dtype)


class SwitchableNormFunction(torch.autograd.Function):
    """SN/SSN in training on ``x`` (N, C, *) with a hand-derived backward.

    Forward: the row kernels compute the IN moments, the members' moments
    and their mix follow (:mod:`ssn_norm.ops.fused_mix`, or inside the
    compiled whole-layer graph), then ``y = x * scale + shift``.  Backward:
    the row sums ``Σ g`` and ``Σ g·x`` are the gradients of ``shift`` and
    ``scale``; :func:`~ssn_norm.ops.moments.member_grads` turns them into
    the gradients of the parameters and of the IN mean ``m`` and variance
    ``v``; the input gradient is ``g·scale + ∂v·2(x - m)/(L - 1) + ∂m/L``,
    one fused kernel.  A backward with ``create_graph=True`` replays the
    reference instead, so double backward is exact.
    """

    @staticmethod
    def forward(ctx, x_in: Tensor, weight: Tensor, bias: Tensor,
                mean_ratio: Tensor, var_ratio: Tensor, spec: MomentSpec,
                eps: float, kernels) -> Tensor:
        num, channels = x_in.shape[:2]
        x = _rows_of(x_in)
        ctx.kernels, ctx.rows = kernels, torch.Size((num, channels))
        ctx.fused = ctx.whole = ctx.native = None
        # For a backward with create_graph=True: the same moments, no
        # second running-statistics update.
        ctx.replay = (spec._replace(record=None), eps)
        inputs = (x_in, weight, bias, mean_ratio, var_ratio)
        ctx.param_dtypes = [
            t.dtype for t in (weight, bias, mean_ratio, var_ratio)
        ]
        if _native_serves(x, spec):
            groups = native.member_groups(spec.members)
            ratios = torch.stack([mean_ratio, var_ratio]).detach()
            out, var_in, mean_in, batch = native.switchable_forward(
                x.view(num, channels, -1), weight.detach(), bias.detach(),
                ratios, groups, eps)
            if batch is not None and spec.record is not None:
                spec.record(*batch)
            ctx.save_for_backward(*inputs, var_in, mean_in)
            ctx.native = (groups, eps)
            return alias(out, x_in.shape)
        if spec.batch_moments is None and backend.whole_layer(kernels, x):
            (out, var_in, mean_in, mean_bn, sq_bn,
             var_bn) = kernels['training_forward'](x.view(num, channels,
                                                          -1), mean_ratio,
                                                   var_ratio, weight, bias,
                                                   eps, spec.members)
            if spec.using_bn and spec.record is not None:
                spec.record(mean_bn, sq_bn, var_bn)
            ctx.save_for_backward(*inputs, var_in, mean_in)
            ctx.whole = (eps, spec.members)
            return alias(out, x_in.shape)
        var, mean = kernels['var_mean'](x)
        scale, shift, ctx.fused = mix_forward(
            var.view(ctx.rows), mean.view(ctx.rows), mean_ratio, var_ratio,
            weight, bias, eps, spec)
        out = _affine(x, scale.reshape(-1), shift.reshape(-1))
        ctx.save_for_backward(*inputs)
        # Not a view: in-place ops on the output (ReLU(inplace=True)) must
        # stay allowed.
        return alias(out, x_in.shape)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if torch.is_grad_enabled():
            # create_graph=True: the gradient must itself be differentiable.
            return _replay_backward(ctx, grad_out)
        if ctx.native is not None:
            return _native_backward(ctx, grad_out)
        if ctx.whole is not None:
            return _whole_backward(ctx, grad_out)
        return _fused_backward(ctx, grad_out)


def _rows_of(x_in: Tensor) -> Tensor:
    """Detached ``x_in`` (N, C, *) as contiguous rows (N·C, L).

    A view for contiguous input; a non-contiguous input is copied (again
    in the backward: only the input itself is kept for it).
    """
    num, channels = x_in.shape[:2]
    return x_in.detach().reshape(num * channels, -1).contiguous()


def _replay_backward(ctx, grad_out: Tensor) -> tuple:
    """Twice-differentiable backward: the reference re-run and differentiated.

    Used when the backward runs with grad mode on (``create_graph=True``).
    The saved inputs carry their own graph there, so the gradients returned
    are differentiable functions of them, exactly as on the ``autograd``
    backend.
    """
    spec, eps = ctx.replay
    inputs = ctx.saved_tensors[:5]
    wanted = [t for t, need in zip(inputs, ctx.needs_input_grad[:5]) if need]
    found = {}
    if wanted:
        x_in, weight, bias, mean_ratio, var_ratio = inputs
        out = normalize_reference(
            x_in.flatten(2), weight, bias, mean_ratio, var_ratio, spec, eps)
        grads = torch.autograd.grad(
            out,
            wanted,
            grad_out.reshape(out.shape),
            create_graph=True,
            allow_unused=True)
        found = {id(t): g for t, g in zip(wanted, grads)}
    result = [
        found.get(id(t)) if need else None
        for t, need in zip(inputs, ctx.needs_input_grad[:5])
    ]
    return (*result, None, None, None)


def _whole_backward(ctx, grad_out: Tensor) -> tuple:
    """Backward of the compiled whole-layer path: one kernel call."""
    x_in, weight, _, mean_ratio, var_ratio, var_in, mean_in = (
        ctx.saved_tensors)
    x = _rows_of(x_in)
    shape = var_in.shape + (-1, )
    grad = grad_out.reshape(shape).contiguous()
    grad_x, *grads = ctx.kernels['training_backward'](grad, x.view(shape),
                                                      var_in, mean_in,
                                                      mean_ratio, var_ratio,
                                                      weight, *ctx.whole)
    grad_x = grad_x.view(grad_out.shape) if ctx.needs_input_grad[0] else None
    grads = [grads[2], grads[3], grads[0], grads[1]]  # weight, bias, ratios
    return (grad_x, *(g.to(dtype)
                      for g, dtype in zip(grads, ctx.param_dtypes)), None,
            None, None)


def _native_backward(ctx, grad_out: Tensor) -> tuple:
    """Backward of the C++ training kernel: one call."""
    x_in, weight, bias, mean_ratio, var_ratio, var_in, mean_in = (
        ctx.saved_tensors)
    x = _rows_of(x_in).view(var_in.shape + (-1, ))
    grad_x, *grads = native.switchable_backward(
        grad_out.reshape(x.shape).contiguous(), x, var_in, mean_in, weight,
        bias, torch.stack([mean_ratio, var_ratio]), *ctx.native,
        ctx.needs_input_grad[0])
    grads = [grads[0], grads[1], grads[2][0], grads[2][1]]
    if grad_x is not None:
        grad_x = grad_x.view(grad_out.shape)
    return (grad_x, *(g.to(dtype)
                      for g, dtype in zip(grads, ctx.param_dtypes)), None,
            None, None)


def _fused_backward(ctx, grad_out: Tensor) -> tuple:
    """Backward of the row-kernel path (hand-differentiated mix)."""
    x = _rows_of(ctx.saved_tensors[0])
    saved, rows = ctx.fused, ctx.rows
    grad = grad_out.reshape(x.shape).contiguous()
    sum_g, sum_gx = (
        s.view(rows) for s in _grad_sums(grad, x, saved.scale.dtype))
    (grad_var, grad_mean, grad_mean_ratio, grad_var_ratio, grad_weight,
     grad_bias) = mix_backward(saved, sum_g, sum_gx)
    grad_x = None
    if ctx.needs_input_grad[0]:
        length = x.shape[-1]
        # ∂v/∂x = 2(x - m)/(L - 1), ∂m/∂x = 1/L; no variance for L = 1.
        coef = grad_var * (2.0 / (length - 1)) if length > 1 else (
            torch.zeros_like(grad_var))
        factors = (saved.scale, saved.moments.mean_in, coef,
                   grad_mean / length)
        grad_x = ctx.kernels['grad_input'](
            grad, x, *(t.reshape(-1) for t in factors)).view(grad_out.shape)
    grads = (grad_weight, grad_bias, grad_mean_ratio, grad_var_ratio)
    return (grad_x, *(g.to(dtype)
                      for g, dtype in zip(grads, ctx.param_dtypes)), None,
            None, None)


def _no_grad(x: Tensor, weight: Tensor, bias: Tensor,
             mean_ratio: Optional[Tensor], var_ratio: Optional[Tensor],
             spec: MomentSpec, eps: float, kernels) -> Tensor:
    """No gradient wanted: row moments, the mix and one affine pass (one
    C++ call where :func:`~ssn_norm.ops.native.serves`)."""
    num, channels = x.shape[:2]
    x2 = _rows_of(x)
    running = spec.running if spec.using_bn and not spec.training else None
    if _native_serves(x, spec):
        out, _, _, batch = native.switchable_forward(
            x2.view(num, channels, -1), weight, bias,
            torch.stack([mean_ratio, var_ratio]),
            native.member_groups(spec.members), eps, running)
        if spec.record is not None and batch is not None:
            spec.record(*batch)
        return out.view(x.shape)
    var_in, mean_in = kernels['var_mean'](x2)
    rows = torch.Size((num, channels))
    moments = member_moments(
        var_in.view(rows), mean_in.view(rows), spec.members, running,
        spec.batch_moments if spec.training else None)
    if spec.record is not None and moments.batch is not None:
        spec.record(*moments.batch)
    mean, var = select(moments, spec, mean_ratio, var_ratio)
    _, scale, shift = scale_shift(mean, var, weight, bias, eps)
    scale, shift = torch.atleast_2d(scale), torch.atleast_2d(shift)
    out = _affine(x2,
                  scale.expand(rows).reshape(-1),
                  shift.expand(rows).reshape(-1))
    return out.view(x.shape)


def _native_serves(x: Tensor, spec: MomentSpec) -> bool:
    # The C++ kernels are the ``compiled`` backend's precompiled code: as
    # fast as the compiled graphs on CPU, without compiling (``eager``
    # stays ATen ops).
    return get_backend() == 'compiled' and native.serves(x, spec)


def _frozen_on(spec: MomentSpec, name: str) -> bool:
    """Eval of a layer frozen on member ``name`` for mean and variance."""
    return (not spec.training and spec.selected is not None
            and all(spec.members[i].name == name for i in spec.selected))


def switchable_norm(x: Tensor,
                    weight: Tensor,
                    bias: Tensor,
                    mean_ratio: Optional[Tensor],
                    var_ratio: Optional[Tensor],
                    spec: MomentSpec,
                    eps: float = 1e-5) -> Tensor:
    """Switchable normalisation of ``x`` (N, C, *) with the current backend.

    Args:
        x: input; statistics are taken over every dimension after C.
        weight, bias: per-channel affine parameters (C,).
        mean_ratio, var_ratio: (K,) ratios over the members, or (K, C) per
            channel (group SN, :func:`~ssn_norm.ops.moments.channel_ratios`)
            (None for a frozen layer in eval, whose ``spec.selected`` is
            used).
        spec: what the layer decided (see
            :class:`~ssn_norm.ops.moments.MomentSpec`); ``spec.record`` is
            called exactly once per training call.
        eps: added to the mixed variance.

    Returns:
        ``(x - mean) * weight / sqrt(var + eps) + bias``, contiguous, in
        ``x``'s dtype and shape; statistics and factors are computed and
        applied in fp32 (fp64 for fp64 input).  All paths (see the module
        docstring) agree up to rounding, also in double backward.
    """
    if _frozen_on(spec, 'BN'):
        running_mean, running_var = spec.running
        return batch_norm_inference(x, running_mean, running_var, weight, bias,
                                    eps)
    if (_frozen_on(spec, 'LN')
            and backend.uses_native_layer_norm(x, weight, bias)):
        # One C++ call with GroupNorm's memory traffic (the released LN
        # variance needs per-channel means, which GroupNorm(1, C) does not
        # take).
        return native.layer_norm_released(x, weight, bias, eps)
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (x, weight, bias, mean_ratio, var_ratio))
    if (get_backend() == 'autograd' or backend.tracing()
            or (wants_grad and not spec.training)):
        return normalize_reference(
            x.flatten(2), weight, bias, mean_ratio, var_ratio, spec,
            eps).view(x.shape)
    kernels = backend.kernels(x)
    if wants_grad:
        return SwitchableNormFunction.apply(x, weight, bias, mean_ratio,
                                            var_ratio, spec, eps, kernels)
    return _no_grad(x, weight, bias, mean_ratio, var_ratio, spec, eps, kernels)
