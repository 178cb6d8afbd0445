"""The switchable norm's one entry: a chooser and three paths.

A layer's forward asks :func:`choose_path` once; the :class:`Plan` it gets
(printable: ``print(layer.plan(x))``) says which path runs, on which kernel
provider (:mod:`ssn_norm.ops.providers`), and whether SSN's SparsestMax
may take its host form.  :func:`switchable_norm` then runs that path and
returns the output and the batch moments of a training forward (the
layer updates its running statistics from them).

==========  ===================================  =========================
path        when                                 what runs
==========  ===================================  =========================
reference   backend ``reference``; an outer      plain autograd ops
            tracer (``torch.compile``,           (:func:`~.moments.
            ``torch.jit``, ONNX export); eval    normalize_reference`)
            with gradients; an empty input
fast        training, and eval without           one autograd Function
            gradients of a layer that is not     (:class:`SwitchableNorm
            frozen                               Function`): the
                                                 provider's four passes
                                                 over the rows, the mix of
                                                 :mod:`~.moments` between
                                                 them, its hand-derived
                                                 backward (:func:`~.
                                                 moments.mix_backward`)
frozen      eval without gradients of a layer    the selected plain
            frozen one-hot (one member for the   normaliser: native
            mean, one for the variance)          BatchNorm inference for
                                                 BN, the provider's LN
                                                 kernel where it has one,
                                                 else row moments, the
                                                 selected members and one
                                                 affine pass
==========  ===================================  =========================

The providers are chosen per device and dtype: C++ on the CPU, compiled on
CUDA, ATen ops otherwise; ``SSN_NORM_BACKEND`` / :func:`set_backend` /
:func:`use_backend` force one (or the reference path).

Only the input is saved at full size for the backward, as in BatchNorm.
Double backward (``create_graph=True``) is exact on every path: grad mode
is on inside a backward exactly when ``create_graph`` is, and then the fast
path's backward re-runs the reference on the saved inputs and
differentiates it.
"""
import contextlib
import os
from typing import Iterator, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .moments import (BatchMoments, MomentSpec, factors, mix_backward,
                      normalize_reference, stat_dtype, uses_input_moments)
from .providers import PROVIDERS, Provider, choose_provider

__all__ = [
    'BACKENDS', 'PATHS', 'Plan', 'SwitchableNormFunction', 'choose_path',
    'get_backend', 'set_backend', 'switchable_norm', 'tracing', 'use_backend'
]

#: The paths of :func:`switchable_norm`.
PATHS = ('reference', 'fast', 'frozen')

#: Valid values of ``SSN_NORM_BACKEND`` / :func:`set_backend`: ``auto``
#: (the default: chosen per call), ``reference`` (the reference path
#: always) or a kernel provider (the fast and frozen paths on it).
BACKENDS = ('auto', 'reference') + tuple(PROVIDERS)

_ENV_VAR = 'SSN_NORM_BACKEND'


def _backend_from_env() -> str:
    value = os.environ.get(_ENV_VAR, 'auto').strip().lower()
    if value not in BACKENDS:
        raise ValueError(f'{_ENV_VAR}={value!r} is not one of {BACKENDS}')
    return value


_backend = _backend_from_env()


def get_backend() -> str:
    """The backend in use: one of :data:`BACKENDS`."""
    return _backend


def set_backend(name: str) -> None:
    """Select the backend of every switchable-norm layer (process-wide)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f'unknown switchable-norm backend {name!r}; choose '
                         f'one of {BACKENDS}')
    _backend = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """:func:`set_backend` for the duration of a ``with`` block."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def tracing() -> bool:
    """Whether an outer tracer watches: it must see plain ops, not an opaque
    Function with Python side effects inside."""
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing()
                or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export())


class Plan(NamedTuple):
    """What :func:`choose_path` decided for one call.

    Attributes:
        path: one of :data:`PATHS`.
        why: the reason, in words.
        provider: the kernel provider of the fast and frozen paths.
        passed_over: ``{provider: reasons}`` of those tried before it.
        host_ratios: SSN's SparsestMax may take its host form.
    """

    path: str
    why: str
    provider: Optional[Provider] = None
    passed_over: Optional[dict] = None
    host_ratios: bool = False

    def __str__(self) -> str:
        text = f'{self.path} path ({self.why})'
        if self.provider is not None:
            text += f', kernel provider {self.provider.name!r}'
        for name, reasons in (self.passed_over or {}).items():
            text += f'; not {name!r}: {", ".join(reasons)}'
        return text


def choose_path(x: Tensor, tensors: Tuple[Optional[Tensor], ...],
                training: bool, selected: Optional[Tuple[int, int]]) -> Plan:
    """The one decision of a layer call: path and kernel provider.

    Args:
        x: the input (N, C, *).
        tensors: the layer's parameters (whether a gradient is wanted).
        training: the layer's mode.
        selected: the frozen selection of an SSN in eval, else None.
    """
    backend = get_backend()
    if backend == 'reference':
        return Plan('reference', 'backend reference')
    if tracing():
        return Plan('reference', 'an outer tracer watches')
    if x.numel() == 0:
        return Plan('reference', 'empty input')
    if not training and torch.is_grad_enabled() and (x.requires_grad or any(
            t is not None and t.requires_grad for t in tensors)):
        return Plan('reference', 'eval with gradients')
    found = choose_provider(x, None if backend == 'auto' else backend)
    if selected is not None and not training:
        return Plan('frozen', 'eval of a frozen selection', found.provider,
                    found.passed_over)
    why = 'training' if training else 'eval without gradients'
    return Plan('fast', why, found.provider, found.passed_over, True)


def _alias(t: Tensor) -> Tensor:
    """``t``, or for a view a tensor of its own sharing the storage: a
    custom Function's output must be no view to take in-place ops (ReLU)."""
    if t._base is None:
        return t
    with torch.no_grad():
        return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(),
                                   t.shape, t.stride())


class SwitchableNormFunction(torch.autograd.Function):
    """The fast path: SN/SSN on ``x`` (N, C, *) with a hand-derived backward.

    Forward: the provider's row moments, :func:`~.moments.factors` (no
    autograd), the provider's affine pass.  Backward: the provider's row
    sums ``Σ g`` and ``Σ g·x``, :func:`~.moments.mix_backward`, and the
    input gradient ``g·scale + ∂v·2(x - m)/(L - 1) + ∂m/L`` (the
    provider's last pass).  A backward with ``create_graph=True`` replays
    the reference instead.  Returns the output and the batch moments (or
    None).  A non-contiguous input is copied for each pass over it (only
    the input itself is kept for the backward, as in BatchNorm).
    """

    @staticmethod
    def forward(ctx, x_in: Tensor, weight: Tensor, bias: Tensor,
                ratios: Tensor, spec: MomentSpec, provider: Provider):
        x = x_in.contiguous()  # grad mode is off in a Function's forward
        var_in, mean_in = provider.row_moments(x)
        found = factors(var_in, mean_in, weight, bias, ratios, spec)
        out = provider.affine(x, found.scale, found.shift)
        ctx.save_for_backward(x_in, weight, bias, ratios)
        ctx.spec, ctx.provider, ctx.saved = spec, provider, found.saved
        return _alias(out), found.batch

    @staticmethod
    def backward(ctx, grad_out: Tensor, *unused):
        if torch.is_grad_enabled():
            # create_graph=True: the gradient must itself be differentiable.
            return _replay_backward(ctx, grad_out)
        x_in, weight, bias, ratios = ctx.saved_tensors
        saved, provider = ctx.saved, ctx.provider
        x = x_in.contiguous()
        grad = grad_out.contiguous()
        sum_g, sum_gx = provider.grad_sums(grad, x)
        (grad_var, grad_mean, grad_ratios, grad_weight,
         grad_bias) = mix_backward(saved, sum_g, sum_gx)
        grad_x = None
        if ctx.needs_input_grad[0]:
            length = x.numel() // sum_g.numel()
            # ∂v/∂x = 2(x - m)/(L - 1), ∂m/∂x = 1/L; no variance for L = 1.
            grad_x = provider.grad_input(
                grad, x, saved.scale, saved.mean_in, grad_var, grad_mean,
                2.0 / (length - 1) if length > 1 else 0.0, 1.0 / length)
        return (grad_x, _cast(grad_weight, weight), _cast(grad_bias, bias),
                _cast(grad_ratios, ratios), None, None)


def _cast(grad: Tensor, like: Tensor) -> Tensor:
    return grad if grad.dtype == like.dtype else grad.to(like.dtype)


def _replay_backward(ctx, grad_out: Tensor) -> tuple:
    """Twice-differentiable backward: the reference re-run on the saved
    inputs (which carry their own graph) and differentiated with
    ``create_graph=True``."""
    inputs = ctx.saved_tensors
    wanted = [t for t, need in zip(inputs, ctx.needs_input_grad) if need]
    x_in, weight, bias, ratios = inputs
    out, _ = normalize_reference(
        x_in.flatten(2), weight, bias, ratios, ctx.spec)
    grads = iter(
        torch.autograd.grad(
            out,
            wanted,
            grad_out.reshape(out.shape),
            create_graph=True,
            allow_unused=True))
    found = [
        next(grads) if need else None for need in ctx.needs_input_grad[:4]
    ]
    return (*found, None, None)


def _frozen(x: Tensor, weight: Tensor, bias: Tensor, spec: MomentSpec,
            provider: Provider) -> Tensor:
    """The frozen path: the selected plain normaliser (no gradient)."""
    chosen = [spec.members[i] for i in spec.selected]
    if all(m.batch and m.groups is None for m in chosen):
        running_mean, running_var = spec.running
        if all(t.dtype == stat_dtype(x.dtype)
               for t in (running_mean, running_var, weight, bias)):
            # BN: one native inference pass (foldable into a conv).
            return F.batch_norm(x, running_mean, running_var, weight, bias,
                                False, 0.0, spec.eps)
    if all(not m.batch and m.groups == 1 for m in chosen):
        out = provider.layer_norm(x, weight, bias, spec.eps)
        if out is not None:
            return out
    x = x.contiguous()
    if uses_input_moments(spec):
        var_in, mean_in = provider.row_moments(x)
    else:
        var_in = mean_in = x.new_zeros(x.shape[:2], dtype=stat_dtype(x.dtype))
    found = factors(var_in, mean_in, weight, bias, None, spec)
    return provider.affine(x, found.scale, found.shift)


def switchable_norm(
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        ratios: Optional[Tensor],
        spec: MomentSpec,
        plan: Optional[Plan] = None) -> Tuple[Tensor, Optional[BatchMoments]]:
    """Switchable normalisation of ``x`` (N, C, *) on the path of ``plan``
    (:func:`choose_path` if not given).

    Args:
        x: input; statistics are taken over every dimension after C.
        weight, bias: per-channel affine parameters (C,).
        ratios: (2, K) mean and variance ratios over the members, or
            (2, K, C) per channel (group SN,
            :func:`~ssn_norm.ops.moments.channel_ratios`); None for a
            frozen layer in eval, whose ``spec.selected`` is used.
        spec: what the layer decided (:class:`~.moments.MomentSpec`).
        plan: the path, from :func:`choose_path`.

    Returns:
        ``(x - mean) * weight / sqrt(var + eps) + bias``, contiguous, in
        ``x``'s dtype and shape (statistics and factors in fp32, fp64 for
        fp64 input), and the :class:`~.moments.BatchMoments` of a training
        forward with a batch member (else None).  All paths agree up to
        rounding, also in double backward.
    """
    if plan is None:
        plan = choose_path(x, (weight, bias, ratios), spec.training,
                           spec.selected)
    if plan.path == 'fast':
        return SwitchableNormFunction.apply(x, weight, bias, ratios, spec,
                                            plan.provider)
    if plan.path == 'frozen':
        return _frozen(x, weight, bias, spec, plan.provider), None
    # An empty input as (0, C, 1): any zero-size shape reshapes back.
    x3 = x.flatten(2) if x.numel() else x.reshape(0, x.shape[1], 1)
    out, batch = normalize_reference(x3, weight, bias, ratios, spec)
    return out.reshape(x.shape), batch
