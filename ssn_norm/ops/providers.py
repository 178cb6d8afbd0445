"""Kernel providers: where the passes over all ``N·C·L`` elements run.

The fast path (:mod:`ssn_norm.ops.switchable_function`) touches the input
only in four passes over its rows ``r = (n, c)`` (``x`` is a contiguous
``(N, C, *)`` tensor, each row the ``L`` elements of one sample and
channel); everything between them is ``O(N·C)`` and is
:mod:`ssn_norm.ops.moments`'.  A provider serves the four passes, all with
the same interface, and the frozen path's ``layer_norm`` where it has one
(per-row values and factors are ``(N, C)``):

====================  ======================================================
``row_moments(x)``    per-row unbiased variance and mean (0 variance for
                      ``L = 1``), in the statistics dtype
``affine(x, a, b)``   ``x * a + b`` with per-row factors, as ``x``
``grad_sums(g, x)``   per-row ``Σ g`` and ``Σ g·x``, in the statistics dtype
``grad_input(...)``   ``g·scale + (x - centre)·coef·p + const·q`` per row
                      (``p``, ``q`` numbers), as ``x``
``layer_norm(...)``   inference of a layer frozen on LN, or None
====================  ======================================================

Providers (:data:`PROVIDERS`), each tested against the reference
(:func:`~ssn_norm.ops.moments.var_mean_in` and the formulas here):

* ``cpp``: the C++ kernels of ``ssn_norm/csrc`` (CPU, fp32/fp64), built at
  install; without a compiler nothing breaks, :data:`UNAVAILABLE_REASON`
  says why they are missing (``SSN_NORM_NATIVE=0`` ignores a built one);
* ``compiled``: ``torch.compile`` of the reference row moments and of
  :func:`grad_input_rows`, tiered: until the process has normalised
  :data:`COMPILE_AFTER_NUMEL` elements of inputs large enough to compile,
  it runs the ``eager`` passes (a short run never pays the compilation);
  a compiler failure warns once and stays eager;
* ``eager``: ATen ops: the reference row moments, native BatchNorm
  kernels on a ``(1, N·C, L)`` view for the affine map and the row sums,
  and :func:`grad_input_rows`.

:func:`choose_provider` takes the first provider of the input's device
(:data:`PRIORITY`: ``cpp`` then ``eager`` on the CPU, ``compiled`` then
``eager`` on CUDA) that supports it, or the one a caller forces; the
answer says why each provider before it was passed over.
"""
import os
import warnings
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .moments import stat_dtype, var_mean_in

__all__ = [
    'COMPILE_AFTER_NUMEL', 'Choice', 'MIN_COMPILED_NUMEL', 'PRIORITY',
    'PROVIDERS', 'Provider', 'UNAVAILABLE_REASON', 'choose_provider',
    'grad_input_rows'
]

_NATIVE_ENV_VAR = 'SSN_NORM_NATIVE'
_NUMEL_ENV_VAR = 'SSN_NORM_MIN_COMPILED_NUMEL'
_AFTER_ENV_VAR = 'SSN_NORM_COMPILE_AFTER'


def grad_input_rows(grad: Tensor,
                    x: Tensor,
                    scale: Tensor,
                    centre: Tensor,
                    coef: Tensor,
                    const: Tensor,
                    coef_scale: float = 1.0,
                    const_scale: float = 1.0) -> Tensor:
    """``grad·scale + (x - centre)·coef·coef_scale + const·const_scale``
    per row of ``x`` (N, C, L), factors (N, C), in ``x``'s dtype, computed
    in ``scale``'s.

    Centred: where the variance is ~0 (a constant row) ``coef`` is huge and
    meaningless, but ``x - centre`` is 0.
    """
    dtype = scale.dtype
    out = x.to(dtype) - centre.unsqueeze(-1)
    out.mul_((coef * coef_scale).unsqueeze(-1)).add_(
        (const * const_scale).unsqueeze(-1))
    out.addcmul_(grad.to(dtype), scale.unsqueeze(-1))
    return out.to(x.dtype)


def _rows(x: Tensor) -> Tensor:
    # (N, C, *) as (N, C, L): a view of contiguous input.
    return x.view(x.shape[0], x.shape[1], -1)


def _per_row(t: Tensor, x: Tensor) -> Tensor:
    # A factor broadcastable to (N, C) as a contiguous (N, C) tensor.
    rows = x.shape[:2]
    if t.shape == rows and t.is_contiguous():
        return t
    return t.expand(rows).contiguous()


class Provider:
    """The passes over the rows (see the module docstring); the ATen ops
    of the ``eager`` provider unless a subclass says otherwise."""

    name = 'eager'

    def not_supported_reasons(self, x: Tensor) -> List[str]:
        """Why this provider cannot serve input ``x`` (empty: it can)."""
        return []

    def row_moments(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return var_mean_in(_rows(x))

    # Native BatchNorm kernels on a (1, N·C, L) view treat each row as a
    # channel.  In inference mode with mean 0, variance 1 and eps 0 the
    # forward is ``x * weight + bias`` and the backward's weight and bias
    # gradients are ``Σ g·x`` and ``Σ g``: one vectorised pass each, no
    # compiler needed, fp16/bf16 input with fp32 factors.
    def affine(self, x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        scale = _per_row(scale, x).view(-1)
        shift = _per_row(shift, x).view(-1)
        zeros, ones = torch.zeros_like(scale), torch.ones_like(scale)
        return torch.batch_norm(
            x.view(1, scale.shape[0], -1), scale, shift, zeros, ones, False,
            0.0, 0.0, False).view(x.shape)

    def grad_sums(self, grad: Tensor, x: Tensor) -> Tuple[Tensor, Tensor]:
        rows = x.shape[:2]
        like = x.new_empty(rows.numel(), dtype=stat_dtype(x.dtype))
        zeros, ones = torch.zeros_like(like), torch.ones_like(like)
        _, sum_gx, sum_g = torch.ops.aten.native_batch_norm_backward(
            grad.view(1, like.shape[0], -1), x.view(1, like.shape[0], -1),
            ones, zeros, ones, None, None, False, 0.0, [False, True, True])
        return sum_g.view(rows), sum_gx.view(rows)

    def grad_input(self, grad: Tensor, x: Tensor, scale: Tensor,
                   centre: Tensor, coef: Tensor, const: Tensor,
                   coef_scale: float, const_scale: float) -> Tensor:
        return grad_input_rows(
            _rows(grad), _rows(x), scale, centre, coef, const, coef_scale,
            const_scale).view(x.shape)

    def layer_norm(self, x: Tensor, weight: Tensor, bias: Tensor,
                   eps: float) -> Optional[Tensor]:
        """A layer frozen on LN in inference, in one call; None: this
        provider has no such kernel (the frozen path's passes serve)."""
        return None


# ------------------------------------------------------------------- C++
def _load_native():
    if os.environ.get(_NATIVE_ENV_VAR,
                      '1').strip().lower() in ('0', 'false', 'no', 'off'):
        return None, f'disabled by {_NATIVE_ENV_VAR}=0'
    try:
        from ssn_norm import _ext
    except ImportError as err:
        return None, (f'not built ({err}); run `pip install '
                      '--no-build-isolation -e .` with a C++ compiler')
    return _ext, None


_ext, UNAVAILABLE_REASON = _load_native()


class CppProvider(Provider):
    """The C++ kernels (CPU, fp32/fp64): the same passes without Python's
    per-op cost, in parallel over rows with double accumulators; LN
    inference in one call (``layer_norm_released``: one read for the
    statistics, one read and write for the output)."""

    name = 'cpp'

    def __init__(self, ext=None) -> None:
        self.ext = ext

    def not_supported_reasons(self, x: Tensor) -> List[str]:
        reasons = []
        if self.ext is None:
            reasons.append(f'C++ kernels {UNAVAILABLE_REASON}')
        if x.device.type != 'cpu':
            reasons.append(f'device {x.device.type} is not the CPU')
        if x.dtype not in (torch.float32, torch.float64):
            reasons.append(f'dtype {x.dtype} is not float32/float64')
        return reasons

    def row_moments(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return tuple(self.ext.row_moments(x))

    # The statistics dtype of fp32/fp64 input is its own: the factors need
    # no cast, only the broadcast ones a copy.
    def affine(self, x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        return self.ext.affine_rows(x, _per_row(scale, x), _per_row(shift, x))

    def grad_sums(self, grad: Tensor, x: Tensor) -> Tuple[Tensor, Tensor]:
        return tuple(self.ext.grad_sums(grad, x))

    def grad_input(self, grad: Tensor, x: Tensor, scale: Tensor,
                   centre: Tensor, coef: Tensor, const: Tensor,
                   coef_scale: float, const_scale: float) -> Tensor:
        return self.ext.grad_input(
            grad, x, *(_per_row(t, x) for t in (scale, centre, coef, const)),
            coef_scale, const_scale)

    def layer_norm(self, x: Tensor, weight: Tensor, bias: Tensor,
                   eps: float) -> Optional[Tensor]:
        if (torch.is_grad_enabled()
                and any(t.requires_grad for t in (x, weight, bias))):
            return None  # the kernel has no backward
        return self.ext.layer_norm_released(x, weight, bias, float(eps))


# -------------------------------------------------------------- compiled
def _count_from_env(name: str, default: int, minimum: int, what: str) -> int:
    value = os.environ.get(name, str(default)).strip()
    if not value.isdigit() or int(value) < minimum:
        kind = 'a positive' if minimum > 0 else 'a non-negative'
        raise ValueError(f'{name}={value!r} must be {kind} integer ({what})')
    return int(value)


def _min_numel_from_env() -> int:
    return _count_from_env(_NUMEL_ENV_VAR, 1 << 18, 1, 'elements per input')


def _compile_after_from_env() -> int:
    return _count_from_env(_AFTER_ENV_VAR, 4 * 10**9, 0,
                           'elements normalised before compiling')


#: Inputs with fewer elements (and 1×1 maps) run the eager passes on the
#: ``compiled`` provider, so small inputs never compile.  Set by
#: ``SSN_NORM_MIN_COMPILED_NUMEL`` (default 2¹⁸).
MIN_COMPILED_NUMEL = _min_numel_from_env()

#: The ``compiled`` provider runs the eager passes until it has normalised
#: this many elements of inputs that could compile, then compiles.  Set by
#: ``SSN_NORM_COMPILE_AFTER``; 0 compiles at the first such input.  The
#: default, 4·10⁹ elements, is about 13 training steps of Mask R-CNN
#: R50-FPN with SN everywhere on one 800×1344 image and about 8 s of the
#: eager passes' extra cost, less than compiling costs (15-35 s on a
#: 2-core CPU): a run that stops earlier never compiles.
COMPILE_AFTER_NUMEL = _compile_after_from_env()


class CompiledProvider(Provider):
    """``torch.compile(dynamic=True)`` of the reference row moments and of
    :func:`grad_input_rows` (the affine map and the row sums are native
    BatchNorm kernels already), after its warm-up.

    The warm-up is one counter, :attr:`seen_numel`: the elements of the
    inputs of :meth:`row_moments` (once per layer call) of at least
    :data:`MIN_COMPILED_NUMEL` elements with rows longer than 1; until it
    reaches :data:`COMPILE_AFTER_NUMEL` every pass is eager.  A compiled
    pass that raises is re-run eagerly: if that succeeds the failure was
    the compiler's, which is reported once and ends compilation for this
    provider; otherwise the eager error propagates.

    Args:
        **compile_kwargs: for :func:`torch.compile`; ``dynamic=True``
            unless given.
    """

    name = 'compiled'

    def __init__(self, **compile_kwargs) -> None:
        compile_kwargs.setdefault('dynamic', True)
        self.compile_kwargs = compile_kwargs
        self.failed = False
        self.seen_numel = 0
        self._compiled: Dict[str, Callable] = {}

    def not_supported_reasons(self, x: Tensor) -> List[str]:
        if not hasattr(torch, 'compile'):
            return ['this torch has no torch.compile']
        return []

    def warm(self) -> bool:
        """Whether the warm-up is over: compiled code from now on."""
        return self.seen_numel >= COMPILE_AFTER_NUMEL

    def end_warm_up(self) -> None:
        """End the warm-up now (benchmarks of a long run's steady state)."""
        self.seen_numel = max(self.seen_numel, COMPILE_AFTER_NUMEL)

    def restart_warm_up(self) -> None:
        """Start the warm-up count again, as in a fresh process (compiled
        graphs are kept; forget them with ``torch._dynamo.reset()``)."""
        self.seen_numel = 0

    @staticmethod
    def _compilable(x: Tensor) -> bool:
        return (x.numel() >= MIN_COMPILED_NUMEL
                and x.numel() > x.shape[0] * x.shape[1])

    def _run(self, name: str, eager: Callable, x: Tensor, *args):
        if self.failed or not (self.warm() and self._compilable(x)):
            return eager(x, *args)
        try:
            if name not in self._compiled:
                self._compiled[name] = torch.compile(eager,
                                                     **self.compile_kwargs)
            # detach(): no view base (Dynamo guards on a base's sizes, a
            # graph per input rank); no autograd: one graph per dtype.
            with torch.no_grad():
                return self._compiled[name](
                    *(t.detach() if isinstance(t, Tensor) else t
                      for t in (x, ) + args))
        except Exception as err:  # noqa: B902 - see the class docstring
            out = eager(x, *args)
            self.failed = True
            warnings.warn(
                f'ssn_norm: torch.compile of the switchable-norm kernels '
                f'failed ({type(err).__name__}: {err}); using eager code from '
                'now on (set SSN_NORM_BACKEND=eager to skip the attempt)',
                RuntimeWarning)
            return out

    def row_moments(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if self._compilable(x) and not self.warm():
            self.seen_numel += x.numel()
        return self._run('row_moments', var_mean_in, _rows(x))

    def grad_input(self, grad: Tensor, x: Tensor, scale: Tensor,
                   centre: Tensor, coef: Tensor, const: Tensor,
                   coef_scale: float, const_scale: float) -> Tensor:
        return self._run('grad_input', grad_input_rows, _rows(grad), _rows(x),
                         scale, centre, coef, const, coef_scale,
                         const_scale).view(x.shape)


#: The providers, by name.
PROVIDERS: Dict[str, Provider] = {
    'cpp': CppProvider(_ext),
    'compiled': CompiledProvider(),
    'eager': Provider(),
}

#: Per device type, the providers tried in order; others: ``eager``.
PRIORITY: Dict[str, Tuple[str, ...]] = {
    'cpu': ('cpp', 'eager'),
    'cuda': ('compiled', 'eager'),
}


class Choice(NamedTuple):
    """The provider chosen for an input, and why each one tried before it
    was passed over (``{name: reasons}``)."""

    provider: Provider
    passed_over: Dict[str, List[str]]


def choose_provider(x: Tensor, force: Optional[str] = None) -> Choice:
    """The provider of the passes over ``x``: ``force`` if given (a
    ``ValueError`` listing its reasons if it cannot serve ``x``), else the
    first of :data:`PRIORITY` for ``x``'s device that supports it."""
    if force is not None:
        provider = PROVIDERS[force]
        reasons = provider.not_supported_reasons(x)
        if reasons:
            raise ValueError(f'the {force!r} kernel provider cannot serve '
                             f'this input: {"; ".join(reasons)}')
        return Choice(provider, {})
    passed_over = {}
    for name in PRIORITY.get(x.device.type, ('eager', )):
        provider = PROVIDERS[name]
        reasons = provider.not_supported_reasons(x)
        if not reasons:
            return Choice(provider, passed_over)
        passed_over[name] = reasons
    return Choice(PROVIDERS['eager'], passed_over)
