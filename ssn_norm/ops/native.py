"""The optional C++ kernels (``ssn_norm/csrc``), with the rules for using
them.

* :func:`layer_norm_released`: inference of a layer frozen on LN.
* :func:`switchable_forward` / :func:`switchable_backward`: SN/SSN (the
  forward in training and eval, the backward in training), the numerics
  of :mod:`ssn_norm.ops.moments` (its members as each
  :class:`~ssn_norm.ops.moments.Member` declares them in ``groups``) in one
  call each way, with BatchNorm's passes over the input: short runs (tests,
  the minis) pay neither Python's per-op cost nor a compiler.

``ssn_norm._ext`` is built by ``pip install --no-build-isolation -e .`` (see
``setup.py``).  Without it nothing breaks: callers fall back to the
pure-PyTorch paths, and :data:`UNAVAILABLE_REASON` says why it is missing.
Set ``SSN_NORM_NATIVE=0`` to ignore a built kernel.
"""
import os
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .moments import Member, MomentSpec

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


def member_groups(table: Tuple[Member, ...]) -> Optional[List[int]]:
    """The training kernel's description of ``table``: per member -1 for
    IN, else its declared ``groups`` (0: over the batch, ``G``: per sample
    over ``G`` channel groups); None if a member declares none."""
    groups = []
    for member in table:
        if member.reduce is None:
            groups.append(-1)
        elif member.groups is None or member.batch != (member.groups == 0):
            return None
        else:
            groups.append(member.groups)
    return groups


def serves(x: Tensor, spec: MomentSpec) -> bool:
    """Whether :func:`switchable_forward` computes this call: kernels built,
    ``x`` non-empty fp32/fp64 on CPU, every member declared, no
    ``batch_moments`` hook (SyncSN's all-reduce stays in PyTorch) and no
    frozen selection (which has paths of its own)."""
    return (_ext is not None and x.device.type == 'cpu'
            and x.dtype in _DTYPES and x.numel() > 0
            and spec.batch_moments is None
            and (spec.training or spec.selected is None)
            and member_groups(spec.members) is not None)


def switchable_forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    ratios: Tensor,
    groups: List[int],
    eps: float,
    running: Optional[Tuple[Tensor, Tensor]] = None
) -> Tuple[Tensor, Tensor, Tensor, Optional[Tuple[Tensor, Tensor, Tensor]]]:
    """SN/SSN forward of contiguous ``x`` (N, C, L), in one call.

    Args:
        ratios: mean and variance ratios stacked, (2, K) or (2, K, C).
        groups: :func:`member_groups` of the layer's table.
        running: eval: the running mean and variance (C,) that replace the
            batch member's moments; None: batch statistics (training).

    Returns:
        The output (as ``x``), the IN variance and mean (N, C) in float64
        (for :func:`switchable_backward`), and, in training, the batch
        member's mean, second moment and variance (C,) in ``x``'s dtype
        (None without a batch member, and in eval).
    """
    running = running if running is not None else (None, None)
    out, var_in, mean_in, *batch = _ext.switchable_forward(
        x, weight, bias, ratios, groups, float(eps), *running)
    return out, var_in, mean_in, tuple(batch) if batch else None


def switchable_backward(
        grad: Tensor, x: Tensor, var_in: Tensor, mean_in: Tensor,
        weight: Tensor, bias: Tensor, ratios: Tensor, groups: List[int],
        eps: float,
        input_grad: bool) -> Tuple[Optional[Tensor], Tensor, Tensor, Tensor]:
    """Gradients of a training :func:`switchable_forward` from a contiguous
    output gradient: of ``x`` (None unless ``input_grad``), weight, bias
    and ``ratios``, in ``x``'s dtype."""
    grad_x, grad_weight, grad_bias, grad_ratios = _ext.switchable_backward(
        grad, x, var_in, mean_in, weight, bias, ratios, groups, float(eps),
        input_grad)
    return (grad_x if input_grad else None), grad_weight, grad_bias, (
        grad_ratios)
