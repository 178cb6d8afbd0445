"""Fast forward and backward of switchable normalisation.

Written with plain autograd ops, SN costs several times BatchNorm: the
backward of ``var_mean`` and of the fused multiply-add each materialise a few
full-size temporaries.  Here everything that touches all ``N×C×L`` elements
is one of four kernels over the rows ``r = (n, c)`` of ``x`` viewed as
``(N·C, L)``:

1. per-row mean and unbiased variance (two passes over each row);
2. ``y = x * scale + shift`` (one read, one write);
3. backward: per-row sums of ``g`` and ``g * x`` (one read of each);
4. backward: ``dx = g * scale + (x - mean) * coef + const`` (one read of
   each, one write).

2 and 3 are native BatchNorm kernels applied to a ``(1, N·C, L)`` view (see
:func:`_affine`); 1 and 4 depend on the backend.  Everything of size
``O(N×C)`` (mixing IN/LN/BN moments, ratios, the SyncSN all-reduce, running
statistics) stays ordinary autograd code supplied by the layer as a ``mix``
callable.  :class:`SwitchableNormFunction` records that small graph in its
forward and differentiates it inside its backward with
:func:`torch.autograd.grad`, so the layer keeps a single definition of it.
In training the layer also passes a :class:`TrainingMix`: the same mix,
computed with a few stacked ops and differentiated by hand
(:mod:`ssn_norm.ops.fused_mix`), which removes most of that small graph's
fixed per-layer cost; ``mix`` itself then serves the ``autograd`` backend
and the no-gradient path.

Backends, chosen with the environment variable ``SSN_NORM_BACKEND`` (read at
import) or :func:`set_backend` / :func:`use_backend`:

* ``compiled`` (default): ``torch.compile(dynamic=True)``.  In training
  (without a ``batch_moments`` hook) the whole layer is one compiled graph
  per direction (:mod:`ssn_norm.ops.fused_train`: moments, mix and output
  forward; row sums, the mix's backward and the input gradient backward),
  and SSN's ratios one more (:func:`fast_ssn_ratios`); otherwise kernels 1
  and 4 are compiled.  Sizes are symbolic, so new image or batch sizes
  reuse the code: one graph per kernel and input dtype (the training
  graphs: one for ``N > 1``, one for ``N = 1``).  Inputs below
  :data:`MIN_COMPILED_NUMEL` elements and 1×1 maps use the eager kernels.
  If compilation fails (no C++ compiler, unsupported Python) a warning is
  issued once and the eager kernels are used from then on.
* ``eager``: the same autograd Function with kernels 1 and 4 made of ATen
  ops; no warm-up, no compiler needed.
* ``autograd``: plain differentiable ops, the reference the others are
  tested against.  It is used automatically while ``torch.compile`` or
  ONNX export trace the model, so an outer compiler sees ordinary ops (the
  layers refuse TorchScript otherwise).

Double backward (``torch.autograd.grad(..., create_graph=True)``: gradient
penalties, meta-learning) is exact on every backend.  The forward cannot
know whether the graph of the gradient will be wanted, so the decision is
taken in the backward: grad mode is on there exactly when ``create_graph``
is, and then the backward re-runs the ``autograd`` reference on the saved
inputs (``mix`` called with ``record=False``: no second running-statistics
update) and differentiates it with ``create_graph=True``.  The fast
kernels serve every ordinary backward; the replay costs one more forward,
only when a graph of the gradient is asked for.  The same holds for SSN's
compiled ratios (:func:`fast_ssn_ratios`).
"""
import contextlib
import os
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import native
from .fused_mix import TrainingMix, mix_backward, mix_forward
from .fused_train import (grad_input_rows, stat_dtype, training_backward,
                          training_forward, var_mean_rows)
from .sparsestmax import ratios_with_freezing, sparsestmax

__all__ = [
    'BACKENDS', 'MIN_COMPILED_NUMEL', 'MixFn', 'SwitchableNormFunction',
    'TrainingMix', 'batch_norm_inference', 'compiles_for', 'fast_ssn_ratios',
    'get_backend', 'set_backend', 'switchable_norm', 'use_backend'
]

#: Valid values of ``SSN_NORM_BACKEND`` / :func:`set_backend`.
BACKENDS = ('compiled', 'eager', 'autograd')

_ENV_VAR = 'SSN_NORM_BACKEND'
_NUMEL_ENV_VAR = 'SSN_NORM_MIN_COMPILED_NUMEL'


def _min_numel_from_env() -> int:
    value = os.environ.get(_NUMEL_ENV_VAR, str(1 << 18)).strip()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f'{_NUMEL_ENV_VAR}={value!r} must be a positive '
                         'integer (elements per input)')
    return int(value)


#: Inputs with fewer elements run the eager kernels under ``compiled``, so
#: small inputs (unit tests, tiny data) trigger no compilation at all.  Set
#: by ``SSN_NORM_MIN_COMPILED_NUMEL`` (default 2¹⁸); long runs of models
#: with many small maps (I3D's late stages) gain from a lower value such as
#: 4096, at the price of compiling in every short process too.
MIN_COMPILED_NUMEL = _min_numel_from_env()

#: ``mix(var_mean_in, mean_ratio, var_ratio, record=True) -> (mean, var)``.
#: ``var_mean_in()`` returns the per-sample (IN) unbiased variance and mean,
#: each ``(N, C)`` in the statistics dtype (fp32; fp64 for fp64 input);
#: ``mix`` calls it only if it needs them.  ``mean`` and ``var`` are in the
#: same dtype and broadcast to ``(N, C)``.  With ``record=False`` (the
#: double-backward replay) ``mix`` must compute the same moments without
#: side effects: no running-statistics update, no moment recorder.
MixFn = Callable[..., Tuple[Tensor, Tensor]]


# ------------------------------------------------------------------ kernels
# All work on rows: x is (R, L) = (N·C, L), factors are (R,).
def _var_mean_reference(x: Tensor) -> Tuple[Tensor, Tensor]:
    xs = x.to(stat_dtype(x.dtype))
    # Released numerics: unbiased IN variance; one element has variance 0.
    return torch.var_mean(xs, dim=-1, correction=int(x.shape[-1] > 1))


def _eager_var_mean(x: Tensor) -> Tuple[Tensor, Tensor]:
    if x.dtype != stat_dtype(x.dtype) or x.shape[-1] == 1:
        return _var_mean_reference(x)
    # Two passes as well: torch.var_mean's Welford loop divides per element
    # and is several times slower than BatchNorm's statistics on CPU.
    mean = x.mean(-1, keepdim=True)
    dev = x - mean
    var = dev.square_().sum(-1).div_(x.shape[-1] - 1)
    return var, mean.squeeze(-1)


def _eager_grad_input(grad: Tensor, x: Tensor, scale: Tensor, centre: Tensor,
                      coef: Tensor, const: Tensor) -> Tensor:
    if x.dtype != scale.dtype:
        return grad_input_rows(grad, x, scale, centre, coef, const)
    out = x - centre.unsqueeze(-1)
    torch.addcmul(const.unsqueeze(-1), out, coef.unsqueeze(-1), out=out)
    return out.addcmul_(grad, scale.unsqueeze(-1))


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


# The whole-layer training formulas have no eager twin of their own: run
# eagerly (after a compiler failure) they are plain ops, and the Function
# then takes its eager path from the next call on.
_EAGER = {
    'var_mean': _eager_var_mean,
    'grad_input': _eager_grad_input,
    'training_forward': training_forward,
    'training_backward': training_backward,
}
_FORMULAS = {
    'var_mean': var_mean_rows,
    'grad_input': grad_input_rows,
    'training_forward': training_forward,
    'training_backward': training_backward,
}


def _alias(t: Tensor, shape: Optional[torch.Size] = None) -> Tensor:
    """Contiguous ``t`` (as ``shape``) as a tensor of its own, not a view.

    Compiled code guards on the sizes of a view's base: for a (N·C, L) view
    of a (N, C, H, W) input that would mean a graph per number of
    dimensions and one for N = 1.  A custom Function may not return a view
    either.  An alias that shares the storage has no base.
    """
    if shape is None:
        if t._base is None and not t.requires_grad:
            return t
        # detach() drops the autograd view link (no base) and costs less
        # than a new tensor.
        return t.detach()
    strides, step = [], 1
    for size in reversed(shape):
        strides.insert(0, step)
        step *= max(size, 1)
    with torch.no_grad():
        return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(),
                                   shape, strides)


def _warn_compile_failure(what: str, err: Exception) -> None:
    warnings.warn(
        f'ssn_norm: torch.compile of {what} failed ({type(err).__name__}: '
        f'{err}); using eager code from now on (set {_ENV_VAR}=eager to skip '
        'the attempt)', RuntimeWarning)


class _CompiledKernels:
    """``torch.compile``d formulas; on a compiler failure, eager for good.

    Compiled lazily, on the first input of at least
    :data:`MIN_COMPILED_NUMEL` elements with rows longer than 1.  A compiled
    kernel that raises is re-run eagerly: if that succeeds the failure was
    the compiler's, which is reported once and disables compilation for
    this object; otherwise the eager error propagates.

    Args:
        **compile_kwargs: for :func:`torch.compile`; ``dynamic=True``
            unless given.
    """

    def __init__(self, **compile_kwargs) -> None:
        compile_kwargs.setdefault('dynamic', True)
        self.compile_kwargs = compile_kwargs
        self._compiled: Optional[Dict[str, Callable]] = None
        self.failed = False
        self._kernels = {name: self._make(name) for name in _FORMULAS}

    def __getitem__(self, name: str) -> Callable:
        return self._kernels[name]

    def accepts(self, x: Tensor) -> bool:
        """Whether rows ``x`` (.., L) run compiled code (else eager)."""
        return self.accepts_size(x.numel(), x.shape[-1])

    def accepts_size(self, numel: int, length: int) -> bool:
        """:meth:`accepts` for ``numel`` elements in rows of ``length``."""
        return not (self.failed or length == 1 or numel < MIN_COMPILED_NUMEL)

    def _make(self, name: str) -> Callable:
        eager = _EAGER[name]

        def kernel(x_or_grad: Tensor, *args):
            if not self.accepts(x_or_grad):
                return eager(x_or_grad, *args)
            try:
                if self._compiled is None:
                    self._compiled = {
                        key: torch.compile(fn, **self.compile_kwargs)
                        for key, fn in _FORMULAS.items()
                    }
                # Always without autograd: one compiled graph per dtype.
                with torch.no_grad():
                    return self._compiled[name](
                        *(_alias(t) if isinstance(t, Tensor) else t
                          for t in (x_or_grad, ) + args))
            except Exception as err:  # noqa: B902 - see class docstring
                out = eager(x_or_grad, *args)
                self.failed = True
                _warn_compile_failure('the switchable-norm kernels', err)
                return out

        return kernel


_COMPILED = _CompiledKernels()


class _CompiledDifferentiable:
    """A differentiable formula through ``torch.compile`` (static shapes).

    Forward and backward are one compiled graph each.  A compiler failure
    is reported once, as for :class:`_CompiledKernels`, and the eager
    formula is used from then on.
    """

    def __init__(self, fn: Callable, **compile_kwargs) -> None:
        compile_kwargs.setdefault('dynamic', False)
        self.fn = fn
        self.compile_kwargs = compile_kwargs
        self._compiled: Optional[Callable] = None
        self.failed = False

    def __call__(self, *args):
        if self.failed:
            return self.fn(*args)
        try:
            if self._compiled is None:
                self._compiled = torch.compile(self.fn, **self.compile_kwargs)
            return self._compiled(*args)
        except Exception as err:  # noqa: B902 - see _CompiledKernels
            out = self.fn(*args)
            self.failed = True
            _warn_compile_failure(self.fn.__name__, err)
            return out


_COMPILED_SSN_RATIOS = _CompiledDifferentiable(ratios_with_freezing)


def compiles_for(x: Tensor) -> bool:
    """Whether the ``compiled`` backend runs compiled code for input ``x``.

    Layers use it to pick compiled versions of their small per-layer
    computations (SSN's SparsestMax) where the kernels are compiled too.
    """
    numel = x.numel()
    return (_backend == 'compiled' and not _tracing()
            and _COMPILED.accepts_size(numel, numel //
                                       (x.shape[0] * x.shape[1])))


class _CompiledRatiosFunction(torch.autograd.Function):
    """The compiled ratios, with an exact double backward.

    A compiled (AOTAutograd) backward cannot itself be differentiated, and
    may run only once.  The forward records the compiled graph on a
    detached leaf; the first ordinary backward runs its compiled backward,
    and one under ``create_graph=True`` (or a repeated one) differentiates
    the eager SparsestMax of the saved logits instead (the rows frozen by
    this call have constant one-hot ratios: no gradient).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, radius: Tensor, mean_fixed: Tensor,
                var_fixed: Tensor, freeze: bool):
        leaf = logits.detach().requires_grad_()
        with torch.enable_grad():
            ratios, stored, flags = _COMPILED_SSN_RATIOS(
                leaf, radius, mean_fixed, var_fixed, freeze)
        # The layer writes its radius and flags in place after this call:
        # keep copies (a few elements) for a later backward.
        ctx.save_for_backward(logits, radius.detach().clone(), flags.clone())
        ctx.graph = (leaf, ratios)
        ctx.mark_non_differentiable(stored, flags)
        return ratios.detach(), stored, flags

    @staticmethod
    def backward(ctx, grad: Tensor, *unused):
        create_graph = torch.is_grad_enabled()
        if not create_graph and ctx.graph is not None:
            leaf, ratios = ctx.graph
            # Compiled backwards may reuse their buffers (inductor donates
            # them) and so run once: a second backward (retain_graph=True
            # outside) takes the eager formula below.
            ctx.graph = None
            with torch.enable_grad():
                found, = torch.autograd.grad(ratios, leaf, grad)
            return found, None, None, None, None
        logits, radius, flags = ctx.saved_tensors
        with torch.enable_grad():
            soft = sparsestmax(logits, radius)
            frozen = flags.bool().unsqueeze(-1)
            grad = torch.where(frozen, torch.zeros_like(grad), grad)
            found, = torch.autograd.grad(
                soft, logits, grad, create_graph=create_graph)
        return found, None, None, None, None


def fast_ssn_ratios(logits: Tensor, radius: Tensor, mean_fixed: Tensor,
                    var_fixed: Tensor,
                    freeze: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`~ssn_norm.ops.sparsestmax.ratios_with_freezing`, compiled.

    Forward and backward run as one compiled graph each, instead of about a
    hundred small ops each way (static shapes: a graph per ``K``, dtype,
    ``freeze`` and whether gradients are recorded).  Twice differentiable:
    a backward with ``create_graph=True`` uses the eager formula.
    """
    args = (logits, radius, mean_fixed, var_fixed, freeze)
    if not (torch.is_grad_enabled() and logits.requires_grad):
        return _COMPILED_SSN_RATIOS(*args)
    return _CompiledRatiosFunction.apply(*args)


def _backend_from_env() -> str:
    value = os.environ.get(_ENV_VAR, 'compiled').strip().lower()
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


def _kernels():
    return _COMPILED if _backend == 'compiled' else _EAGER


def _tracing() -> bool:
    # Outer tracers must see plain ops, not an opaque Function with Python
    # side effects inside.
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing()
                or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export())


# ------------------------------------------------------------------ helpers
def uses_native_layer_norm(x: Tensor, weight: Tensor, bias: Tensor) -> bool:
    """Whether :func:`ssn_norm.ops.native.layer_norm_released` serves a
    layer frozen on LN: the kernel accepts the call, the backend is not the
    pure-PyTorch reference, and no tracer is watching."""
    return (_backend != 'autograd' and not _tracing()
            and native.accepts(x, weight, bias))


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


def _scale_shift(mean: Tensor, var: Tensor, weight: Tensor, bias: Tensor,
                 eps: float) -> Tuple[Tensor, Tensor]:
    """Factors of ``y = x * scale + shift``; each (N, C) or (1, C)."""
    dtype = var.dtype
    # A frozen SSN may mix a per-sample mean with a per-channel variance:
    # scale is then (1, C) and shift (N, C).
    scale = torch.atleast_2d(weight.to(dtype) * torch.rsqrt(var + eps))
    shift = torch.atleast_2d(bias.to(dtype) - mean * scale)
    return scale, shift


def _rows(t: Tensor, shape: torch.Size) -> Tensor:
    """(N, C) or (1, C) factor as a contiguous (N·C,) vector."""
    return t.expand(shape).reshape(-1)


def _sum_to(total: Tensor, like: Tensor) -> Tensor:
    """(N, C) per-row sums reduced to the shape of a factor."""
    if like.shape[0] == total.shape[0]:
        return total
    return total.sum(0, keepdim=True)


def _leaf(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach().requires_grad_(t.requires_grad)


def _autograd_switchable_norm(x3: Tensor, weight: Tensor, bias: Tensor,
                              mean_ratio: Optional[Tensor],
                              var_ratio: Optional[Tensor], mix: MixFn,
                              eps: float) -> Tensor:
    """The reference: plain differentiable ops on ``x3`` (N, C, L)."""

    def var_mean_in():
        return _var_mean_reference(x3)

    mean, var = mix(var_mean_in, mean_ratio, var_ratio)
    scale, shift = _scale_shift(mean, var, weight, bias, eps)
    out = x3.to(scale.dtype) * scale.unsqueeze(-1) + shift.unsqueeze(-1)
    return out.to(x3.dtype)


class SwitchableNormFunction(torch.autograd.Function):
    """SN of ``x`` (N, C, *) with a hand-derived backward for the big part.

    Forward: the kernels compute the per-row (IN) moments of ``x``; ``mix``
    (recorded under autograd on detached leaves) turns them into the mixed
    moments; then ``y = x * scale + shift``.  Only ``x`` is saved at full
    size, as in BatchNorm.  Backward: the row sums ``Σ g`` and ``Σ g·x`` are
    the gradients of ``shift`` and ``scale``; the recorded small graph turns
    them into the gradients of the parameters and of the IN mean ``m`` and
    variance ``v``; the input gradient is
    ``g·scale + ∂v·2(x - m)/(L - 1) + ∂m/L``, one fused kernel.

    Only the input is saved at full size (as in BatchNorm).  A backward
    with ``create_graph=True`` (grad mode on inside the backward) replays
    the ``autograd`` reference instead, so double backward is exact.
    """

    @staticmethod
    def forward(ctx,
                x_in: Tensor,
                weight: Tensor,
                bias: Tensor,
                mean_ratio: Optional[Tensor],
                var_ratio: Optional[Tensor],
                mix: MixFn,
                eps: float,
                kernels,
                fused: Optional[TrainingMix] = None) -> Tensor:
        num, channels = x_in.shape[:2]
        x = _rows_of(x_in)
        rows = torch.Size((num, channels))
        ctx.kernels, ctx.rows, ctx.fused, ctx.whole = kernels, rows, None, None
        # For a backward with create_graph=True (see _replay_backward).
        ctx.replay = (mix, eps)
        inputs = (x_in, weight, bias, mean_ratio, var_ratio)
        ctx.param_dtypes = [
            None if t is None else t.dtype
            for t in (weight, bias, mean_ratio, var_ratio)
        ]
        if (fused is not None and mean_ratio is not None
                and fused.batch_moments is None
                and isinstance(kernels, _CompiledKernels)
                and kernels.accepts(x)):
            # One compiled graph for the whole layer (fused_train).
            (out, var_in, mean_in, mean_bn, sq_bn,
             var_bn) = kernels['training_forward'](x.view(num, channels,
                                                          -1), mean_ratio,
                                                   var_ratio, weight, bias,
                                                   eps, fused.using_bn)
            if fused.using_bn and fused.record is not None:
                fused.record(mean_bn, sq_bn, var_bn)
            ctx.save_for_backward(*inputs, var_in, mean_in)
            ctx.whole = (eps, fused.using_bn)
            return _alias(out, x_in.shape)
        if fused is not None and mean_ratio is not None:
            var, mean = kernels['var_mean'](x)
            var, mean = var.view(rows), mean.view(rows)
            scale, shift, ctx.fused = mix_forward(var, mean, mean_ratio,
                                                  var_ratio, weight, bias, eps,
                                                  fused)
            out = _affine(x, scale.reshape(-1), shift.reshape(-1))
            ctx.save_for_backward(*inputs)
            return _alias(out, x_in.shape)
        params = [_leaf(t) for t in (weight, bias, mean_ratio, var_ratio)]
        moments: List[Tensor] = []

        def var_mean_in():
            with torch.no_grad():
                var, mean = kernels['var_mean'](x)
            # Leaves of the small graph: their gradients feed kernel 4.
            moments[:] = [
                t.view(num, channels).requires_grad_(ctx.needs_input_grad[0])
                for t in (var, mean)
            ]
            return tuple(moments)

        with torch.enable_grad():
            mean, var = mix(var_mean_in, params[2], params[3])
            scale, shift = _scale_shift(mean, var, params[0], params[1], eps)
        out = _affine(x, _rows(scale.detach(), rows),
                      _rows(shift.detach(), rows))
        ctx.save_for_backward(*inputs)
        ctx.small_graph = (scale, shift, params, moments)
        # Not a view: in-place ops on the output (ReLU(inplace=True)) must
        # stay allowed.
        return _alias(out, x_in.shape)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if torch.is_grad_enabled():
            # create_graph=True: the gradient must itself be differentiable.
            return _replay_backward(ctx, grad_out)
        if ctx.whole is not None:
            return _whole_backward(ctx, grad_out)
        if ctx.fused is not None:
            return _fused_backward(ctx, grad_out)
        x = _rows_of(ctx.saved_tensors[0])
        scale, shift, params, moments = ctx.small_graph
        kernels, rows = ctx.kernels, ctx.rows
        grad = grad_out.reshape(x.shape).contiguous()
        sum_g, sum_gx = (
            s.view(rows) for s in _grad_sums(grad, x, scale.dtype))
        wrt = [
            t for t in params + moments if t is not None and t.requires_grad
        ]
        grads = {}
        if wrt:
            # Kept for a second backward (retain_graph=True outside); the
            # small graph goes with this node.
            with torch.enable_grad():
                found = torch.autograd.grad(
                    (scale, shift),
                    wrt, (_sum_to(sum_gx, scale), _sum_to(sum_g, shift)),
                    retain_graph=True,
                    allow_unused=True)
            grads = {id(t): g for t, g in zip(wrt, found)}

        def grad_of(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else grads.get(id(t))

        grad_x = None
        if ctx.needs_input_grad[0]:
            length = x.shape[-1]
            centre = coef = const = sum_g.new_zeros(rows)
            if moments:
                grad_var, grad_mean = (grad_of(t) for t in moments)
                centre = moments[1].detach()
                if grad_var is not None and length > 1:
                    coef = grad_var * (2.0 / (length - 1))  # ∂v/∂x · (x - m)
                if grad_mean is not None:
                    const = grad_mean / length  # ∂m/∂x = 1/L
            factors = (scale.detach(), centre, coef, const)
            grad_x = kernels['grad_input'](grad, x,
                                           *(_rows(t, rows) for t in factors))
            grad_x = grad_x.view(grad_out.shape)
        return (grad_x, *(grad_of(t) for t in params), None, None, None, None)


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
    backend.  ``mix`` is re-run with ``record=False``: the running
    statistics were updated once, in the forward.
    """
    mix, eps = ctx.replay
    inputs = ctx.saved_tensors[:5]
    x_in, weight, bias, mean_ratio, var_ratio = inputs

    def replay_mix(var_mean_in, mean_ratio, var_ratio):
        return mix(var_mean_in, mean_ratio, var_ratio, record=False)

    wanted = [
        t for t, need in zip(inputs, ctx.needs_input_grad[:5])
        if need and t is not None
    ]
    found = {}
    if wanted:
        out = _autograd_switchable_norm(x_in.flatten(2), weight, bias,
                                        mean_ratio, var_ratio, replay_mix,
                                        eps)
        grads = torch.autograd.grad(
            out,
            wanted,
            grad_out.reshape(out.shape),
            create_graph=True,
            allow_unused=True)
        found = {id(t): g for t, g in zip(wanted, grads)}
    result = [
        found.get(id(t)) if need and t is not None else None
        for t, need in zip(inputs, ctx.needs_input_grad[:5])
    ]
    return (*result, None, None, None, None)


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
            None, None, None)


def _fused_backward(ctx, grad_out: Tensor) -> tuple:
    """Backward of the :class:`TrainingMix` path (no small graph)."""
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
        factors = (saved.scale, saved.means[0], coef, grad_mean / length)
        grad_x = ctx.kernels['grad_input'](
            grad, x, *(t.reshape(-1) for t in factors)).view(grad_out.shape)
    grads = (grad_weight, grad_bias, grad_mean_ratio, grad_var_ratio)
    return (grad_x, *(g.to(dtype)
                      for g, dtype in zip(grads, ctx.param_dtypes)), None,
            None, None, None)


def switchable_norm(x: Tensor,
                    weight: Tensor,
                    bias: Tensor,
                    mean_ratio: Optional[Tensor],
                    var_ratio: Optional[Tensor],
                    mix: MixFn,
                    eps: float = 1e-5,
                    fused: Optional[TrainingMix] = None) -> Tensor:
    """Switchable normalisation of ``x`` (N, C, *) with the current backend.

    Args:
        x: input; statistics are taken over every dimension after C.
        weight, bias: per-channel affine parameters (C,).
        mean_ratio, var_ratio: handed to ``mix`` as they are (None if
            unused); their gradients flow back through ``mix``.
        mix: the layer's mixing of moments, see :data:`MixFn`.  It is called
            exactly once per call, so its side effects (running statistics)
            happen once.
        eps: added to the mixed variance.
        fused: the same mix as ``mix`` in training with ratios, for the
            fast backends' differentiable path: computed and differentiated
            by hand (:mod:`ssn_norm.ops.fused_mix`) instead of recording
            ``mix``'s small graph; ``mix`` is then not called.

    Returns:
        ``(x - mean) * weight / sqrt(var + eps) + bias``, contiguous, in
        ``x``'s dtype and shape; statistics and factors are computed and
        applied in fp32 (fp64 for fp64 input).  All backends agree up to
        rounding, also in double backward.
    """
    if _backend == 'autograd' or _tracing():
        return _autograd_switchable_norm(
            x.flatten(2), weight, bias, mean_ratio, var_ratio, mix,
            eps).view(x.shape)
    kernels = _kernels()
    if torch.is_grad_enabled() and any(
            t is not None and t.requires_grad
            for t in (x, weight, bias, mean_ratio, var_ratio)):
        return SwitchableNormFunction.apply(x, weight, bias, mean_ratio,
                                            var_ratio, mix, eps, kernels,
                                            fused)
    num, channels = x.shape[:2]
    x2 = x.detach().reshape(num * channels, -1).contiguous()

    def var_mean_in():
        var, mean = kernels['var_mean'](x2)
        return var.view(num, channels), mean.view(num, channels)

    mean, var = mix(var_mean_in, mean_ratio, var_ratio)
    scale, shift = _scale_shift(mean, var, weight, bias, eps)
    rows = torch.Size((num, channels))
    out = _affine(x2, _rows(scale, rows), _rows(shift, rows))
    return out.view(x.shape)
