"""Backend machinery of the switchable norms: one switch, one compiler.

Holds what decides *how* the layers run, apart from the numerics
(:mod:`ssn_norm.ops.moments`) and the autograd Function
(:mod:`ssn_norm.ops.switchable_function`): the environment
(``SSN_NORM_BACKEND``, ``SSN_NORM_MIN_COMPILED_NUMEL``,
``SSN_NORM_COMPILE_AFTER``), :func:`set_backend` / :func:`use_backend`, the
row kernels in their eager and compiled forms, ``torch.compile`` with its
one-time fallback warning, SSN's compiled ratios and the rules for the
native C++ LN kernel.

Backends (:data:`BACKENDS`):

* ``compiled`` (default): tiered.  A process starts on the eager kernels
  and switches, for good, to ``torch.compile(dynamic=True)`` of the row
  kernels and of the whole-layer training graphs
  (:mod:`ssn_norm.ops.fused_train`), and SSN's ratios
  (:func:`fast_ssn_ratios`), once its layers have normalised
  :data:`COMPILE_AFTER_NUMEL` elements in inputs large enough to compile:
  a short run (a test, a smoke run, an evaluation, the mini suite) never
  pays the compilation (15-35 s per model on a 2-core CPU), a long one
  pays it once, after about 13 Mask R-CNN steps.  Inputs below
  :data:`MIN_COMPILED_NUMEL` elements and 1×1 maps always use the eager
  kernels.  If compilation fails (no C++ compiler, unsupported Python) a
  warning is issued once and the eager kernels are used from then on.
* ``eager``: the same autograd Function with the row kernels made of ATen
  ops; no warm-up, no compiler needed.
* ``autograd``: plain differentiable ops
  (:func:`~ssn_norm.ops.moments.normalize_reference`), the reference the
  others are tested against.  Used automatically while ``torch.compile`` or
  ONNX export trace the model (:func:`tracing`), so an outer compiler sees
  ordinary ops.
"""
import contextlib
import os
import warnings
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor

from . import native
from .fused_train import (grad_input_rows, training_backward, training_forward,
                          var_mean_rows)
from .moments import stat_dtype, var_mean_in
from .sparsestmax import ratios_with_freezing_tensor, sparsestmax_tensor

__all__ = [
    'BACKENDS', 'COMPILE_AFTER_NUMEL', 'MIN_COMPILED_NUMEL', 'compiles_for',
    'end_warm_up', 'fast_ssn_ratios', 'alias', 'get_backend', 'kernels',
    'restart_warm_up', 'set_backend', 'tracing', 'use_backend',
    'uses_native_layer_norm', 'whole_layer'
]

#: Valid values of ``SSN_NORM_BACKEND`` / :func:`set_backend`.
BACKENDS = ('compiled', 'eager', 'autograd')

_ENV_VAR = 'SSN_NORM_BACKEND'
_NUMEL_ENV_VAR = 'SSN_NORM_MIN_COMPILED_NUMEL'
_AFTER_ENV_VAR = 'SSN_NORM_COMPILE_AFTER'


def _count_from_env(name: str, default: int, minimum: int, what: str) -> int:
    value = os.environ.get(name, str(default)).strip()
    if not value.isdigit() or int(value) < minimum:
        kind = 'a positive' if minimum > 0 else 'a non-negative'
        raise ValueError(f'{name}={value!r} must be {kind} integer ({what})')
    return int(value)


#: Inputs with fewer elements run the eager kernels under ``compiled``, so
#: small inputs (unit tests, tiny data) trigger no compilation at all.  Set
#: by ``SSN_NORM_MIN_COMPILED_NUMEL`` (default 2¹⁸); long runs of models
#: with many small maps (I3D's late stages) gain from a lower value such as
#: 4096, at the price of compiling in every short process too.
def _min_numel_from_env() -> int:
    return _count_from_env(_NUMEL_ENV_VAR, 1 << 18, 1, 'elements per input')


def _compile_after_from_env() -> int:
    return _count_from_env(_AFTER_ENV_VAR, 4 * 10**9, 0,
                           'elements normalised before compiling')


MIN_COMPILED_NUMEL = _min_numel_from_env()

#: The ``compiled`` backend runs the eager kernels until its layers have
#: normalised this many elements (summed over the calls whose input could
#: compile), then compiles.  Set by ``SSN_NORM_COMPILE_AFTER``; 0 compiles
#: at the first such call.  The default, 4·10⁹ elements, is about 13
#: training steps of Mask R-CNN R50-FPN with SN everywhere on one
#: 800×1344 image (0.31·10⁹ elements a step) and about 8 s of the eager
#: kernels' extra passes (about 2 ns an element, forward and backward, on
#: a 2-core CPU), less than compiling costs (15-35 s): a run that stops
#: earlier never compiles, a long one pays the compilation once.
COMPILE_AFTER_NUMEL = _compile_after_from_env()


# ------------------------------------------------------------------ kernels
# All work on rows: x is (R, L) = (N·C, L), factors are (R,).
def _eager_var_mean(x: Tensor) -> Tuple[Tensor, Tensor]:
    if x.dtype != stat_dtype(x.dtype) or x.shape[-1] == 1:
        return var_mean_in(x)
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


def alias(t: Tensor, shape: Optional[torch.Size] = None) -> Tensor:
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

    Compiled lazily, once :meth:`tick` has counted
    :data:`COMPILE_AFTER_NUMEL` elements of inputs of at least
    :data:`MIN_COMPILED_NUMEL` elements with rows longer than 1 (until
    then :meth:`accepts` is False and callers run the eager kernels).  A
    compiled kernel that raises is re-run eagerly: if that succeeds the
    failure was the compiler's, which is reported once and disables
    compilation for this object; otherwise the eager error propagates.

    Args:
        **compile_kwargs: for :func:`torch.compile`; ``dynamic=True``
            unless given.
    """

    def __init__(self, **compile_kwargs) -> None:
        compile_kwargs.setdefault('dynamic', True)
        self.compile_kwargs = compile_kwargs
        self._compiled: Optional[Dict[str, Callable]] = None
        self.failed = False
        #: Elements of compilable inputs seen so far (see :meth:`tick`).
        self.seen_numel = 0
        self._kernels = {name: self._make(name) for name in _FORMULAS}

    def __getitem__(self, name: str) -> Callable:
        return self._kernels[name]

    @staticmethod
    def _compilable(numel: int, length: int) -> bool:
        return length > 1 and numel >= MIN_COMPILED_NUMEL

    def tick(self, numel: int, length: int) -> None:
        """Count one layer call on ``numel`` elements in rows of ``length``
        towards :data:`COMPILE_AFTER_NUMEL` (once per layer call)."""
        if self._compilable(numel, length) and not self.warm():
            self.seen_numel += numel

    def warm(self) -> bool:
        """Whether the warm-up is over: compiled code runs from now on."""
        return self.seen_numel >= COMPILE_AFTER_NUMEL

    def accepts(self, x: Tensor) -> bool:
        """Whether rows ``x`` (.., L) run compiled code (else eager)."""
        return self.accepts_size(x.numel(), x.shape[-1])

    def accepts_size(self, numel: int, length: int) -> bool:
        """:meth:`accepts` for ``numel`` elements in rows of ``length``."""
        return (not self.failed and self.warm()
                and self._compilable(numel, length))

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
                        *(alias(t) if isinstance(t, Tensor) else t
                          for t in (x_or_grad, ) + args))
            except Exception as err:  # noqa: B902 - see class docstring
                out = eager(x_or_grad, *args)
                self.failed = True
                _warn_compile_failure('the switchable-norm kernels', err)
                return out

        return kernel


_COMPILED = _CompiledKernels()


def end_warm_up() -> None:
    """End the ``compiled`` backend's warm-up now: compiled code from the
    next large input on (benchmarks of a long run's steady state)."""
    _COMPILED.seen_numel = max(_COMPILED.seen_numel, COMPILE_AFTER_NUMEL)


def restart_warm_up() -> None:
    """Start the warm-up count again, as in a fresh process (benchmarks of
    a first step).  Compiled graphs are kept; forget them with
    ``torch._dynamo.reset()``."""
    _COMPILED.seen_numel = 0


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


_COMPILED_SSN_RATIOS = _CompiledDifferentiable(ratios_with_freezing_tensor)


def compiles_for(x: Tensor) -> bool:
    """Whether the ``compiled`` backend runs compiled code for input ``x``.

    Layers use it to pick compiled versions of their small per-layer
    computations (SSN's SparsestMax) where the kernels are compiled too.
    """
    numel = x.numel()
    return (_backend == 'compiled' and not tracing()
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
            # The tensor code, as compiled: the same rounding as the first
            # backward.
            soft = sparsestmax_tensor(logits, radius)
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


def whole_layer(kernels: object, x: Tensor) -> bool:
    """Whether ``kernels`` run the compiled whole-layer training graphs for
    rows ``x`` (N·C, L)."""
    return isinstance(kernels, _CompiledKernels) and kernels.accepts(x)


def kernels(x: Optional[Tensor] = None):
    """The kernels of the current backend; with ``x`` (N, C, *), counts
    one layer call on it towards the compiled backend's warm-up."""
    if _backend != 'compiled':
        return _EAGER
    if x is not None:
        numel = x.numel()
        _COMPILED.tick(numel, numel // (x.shape[0] * x.shape[1]))
    return _COMPILED


def tracing() -> bool:
    # Outer tracers must see plain ops, not an opaque Function with Python
    # side effects inside.
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing()
                or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export())


def uses_native_layer_norm(x: Tensor, weight: Tensor, bias: Tensor) -> bool:
    """Whether :func:`ssn_norm.ops.native.layer_norm_released` serves a
    layer frozen on LN: the kernel accepts the call, the backend is not the
    pure-PyTorch reference, and no tracer is watching."""
    return (_backend != 'autograd' and not tracing()
            and native.accepts(x, weight, bias))
