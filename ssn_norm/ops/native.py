"""The optional C++ kernel (``ssn_norm/csrc``), with the rules for using it.

``ssn_norm._ext`` is built by ``pip install --no-build-isolation -e .`` (see
``setup.py``).  Without it nothing breaks: callers fall back to the
pure-PyTorch paths, and :data:`UNAVAILABLE_REASON` says why it is missing.
Set ``SSN_NORM_NATIVE=0`` to ignore a built kernel.
"""
import os

import torch
from torch import Tensor

_ENV_VAR = 'SSN_NORM_NATIVE'


def _load():
    if os.environ.get(_ENV_VAR,
                      '1').strip().lower() in ('0', 'false', 'no', 'off'):
        return None, f'disabled by {_ENV_VAR}=0'
    try:
        from ssn_norm import _ext
    except ImportError as err:
        return None, (f'not built ({err}); run `pip install '
                      '--no-build-isolation -e .` with a C++ compiler')
    return _ext, None


_ext, UNAVAILABLE_REASON = _load()
_DTYPES = (torch.float32, torch.float64)


def available() -> bool:
    """Whether the C++ kernel is built and enabled."""
    return _ext is not None


def accepts(x: Tensor, *params: Tensor) -> bool:
    """Whether the kernel can compute ``x`` (inference only: no tensor of
    the call may need a gradient, since the kernel has no backward).

    Tracers must see plain PyTorch ops: layers ask
    :func:`ssn_norm.ops.backend.uses_native_layer_norm`.
    """
    if _ext is None or x.device.type != 'cpu' or x.dtype not in _DTYPES:
        return False
    return not (torch.is_grad_enabled()
                and any(t.requires_grad for t in (x, ) + params))


def layer_norm_released(x: Tensor, weight: Tensor, bias: Tensor,
                        eps: float) -> Tensor:
    """Inference LN of a switchable norm with the released numerics.

    ``(x - mean_ln) * weight / sqrt(var_ln + eps) + bias`` per sample of
    ``x`` (N, C, *), where ``mean_ln`` is the mean over C and space and
    ``var_ln = mean_c(var_c + m_c²) - mean_ln²`` with the *unbiased*
    per-channel variances ``var_c`` (0 for one element) and channel means
    ``m_c``: the LN term of SN/SSN, not ``GroupNorm(1, C)``.  One read for
    the statistics and one read and write for the output, as GroupNorm.
    Only for inputs :func:`accepts`; returns a contiguous tensor of ``x``'s
    shape and dtype.
    """
    if _ext is None:
        raise RuntimeError(f'ssn_norm C++ kernel unavailable: '
                           f'{UNAVAILABLE_REASON}')
    return _ext.layer_norm_released(x, weight, bias, float(eps))
