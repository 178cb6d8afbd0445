"""The layers' ratios from their logits, defined once.

:func:`softmax_ratios` is SN's; :func:`sparsestmax_ratios` is SSN's, with
the freezing of one-hot rows.  The layers, SSN's deployment and the ratio
analysis (:mod:`ssn_norm.analysis.ratios`) all call these.  Ratios are
computed in fp32 (fp64 for fp64 logits) whatever the module's dtype, as
under autocast.
"""
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import sparsestmax_host
from .sparsestmax import is_one_hot, sparsestmax, working

__all__ = ['SSNRatios', 'softmax_ratios', 'sparsestmax_ratios']


def softmax_ratios(logits: Tensor) -> Tensor:
    """SN's ratios: the softmax of each row of logits, in fp32 (fp64 for
    fp64 logits) whatever the module's dtype."""
    return working(logits).softmax(-1)


class SSNRatios(NamedTuple):
    """SSN's ratios (R, K); with freezing, ``newly`` (R,) bool: rows frozen
    by this call, and ``hot`` (R, K): the one-hot vectors to store as
    their logits (None without freezing, or where no row is frozen)."""

    ratios: Tensor
    newly: Optional[Tensor] = None
    hot: Optional[Tensor] = None


def sparsestmax_ratios(logits: Tensor,
                       radius: Tensor,
                       fixed: Tensor,
                       freeze: bool,
                       host: bool = False) -> SSNRatios:
    """SSN's ratios from its logits (R, K), each row on its own.

    A row already frozen (``fixed`` (R,), nonzero) is the one-hot vector of
    its logits' argmax, constant (zero gradient); the others are
    SparsestMax at ``radius``.  With ``freeze`` (training) a row whose
    SparsestMax is one-hot within :data:`ONE_HOT_TOL` freezes now: its
    ratios are that one-hot vector, constant from here on, and the result
    says which rows froze (the layer stores the one-hot logits and flags,
    so the choice survives optimizer drift and save/load).  Pure.

    Args:
        logits: (R, K), computed in fp32 (fp64 for fp64).
        radius: the SparsestMax radius (scalar or (1,)).
        fixed: (R,) flags of the rows already frozen.
        freeze: also freeze rows that are one-hot now.
        host: compute SparsestMax in its host form
            (:mod:`~ssn_norm.ops.sparsestmax_host`: small CPU rows, off the
            borders between its pieces) where it serves; the tensor code
            otherwise.
    """
    logits = working(logits)
    fixed = fixed.bool()
    soft = None
    if host and sparsestmax_host.accepts(logits, radius):
        soft = sparsestmax_host.sparsestmax(logits, radius, skip=fixed)
    if soft is None:
        soft = sparsestmax(logits, radius)
    frozen, newly = fixed, None
    if freeze:
        settled = soft.detach()
        newly = is_one_hot(settled) & ~fixed
        frozen = fixed | newly
    if frozen.device.type == 'cpu' and not bool(frozen.any()):
        # Nothing frozen (a free host read on the CPU): SparsestMax's.
        return SSNRatios(soft, newly)
    num = logits.shape[-1]
    hot = F.one_hot(logits.detach().argmax(-1), num).to(soft.dtype)
    if freeze:
        hot = torch.where(
            newly.unsqueeze(-1),
            F.one_hot(settled.argmax(-1), num).to(soft.dtype), hot)
    ratios = torch.where(frozen.unsqueeze(-1), hot, soft)
    return SSNRatios(ratios, newly, hot if freeze else None)
