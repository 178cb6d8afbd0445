"""Sparsemax and SparsestMax over the last dimension, vectorised.

SparsestMax (Shao et al., "SSN: Learning Sparse Switchable Normalization via
SparsestMax", CVPR 2019) first projects the logits onto the probability simplex
(sparsemax), then, while the projection lies within distance ``radius`` of the
centre of the face it sits on, pushes it outward along the ray from that centre
to distance ``radius``.  A push that leaves the simplex is projected onto the
simplex again; the new point lies on a smaller face whose centre is the
orthogonal projection of the old centre, so the remaining radius shrinks by
Pythagoras: ``r'^2 = r^2 - |u - u'|^2``.  Each round drops at least one
coordinate from the support, so ``K - 1`` rounds suffice for ``K`` logits
(and are all that run).

Everything is expressed with ``torch.where`` over a fixed number of rounds: no
data-dependent Python control flow, no host synchronisation, any device.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import sparsestmax_host

#: Ratios whose largest entry is within this of 1 count as one-hot.  Pushed
#: points reach a vertex only up to float rounding, so exact equality (as in
#: the released code) would leave layers unfrozen forever.
ONE_HOT_TOL = 1e-5

# Below this distance a point is taken to be the centre of its face.
_CENTRE_EPS = 1e-12


def sparsemax(logits: Tensor) -> Tensor:
    """Euclidean projection of ``logits`` onto the simplex (Martins et al.).

    Returns a tensor of the same shape whose last dimension is non-negative
    and sums to one; exact zeros outside the support.
    """
    num = logits.shape[-1]
    # The projection is shift invariant; measuring from the largest logit
    # makes a single-coordinate support exactly 1 in low precision too.
    logits = logits - logits.detach().amax(dim=-1, keepdim=True)
    z_sorted, _ = torch.sort(logits, dim=-1, descending=True)
    cumsum = z_sorted.cumsum(dim=-1)
    k = torch.arange(1, num + 1, device=logits.device, dtype=logits.dtype)
    in_support = 1 + k * z_sorted > cumsum
    support_size = in_support.sum(dim=-1, keepdim=True)
    tau = (cumsum.gather(-1, support_size - 1) - 1) / support_size.to(
        logits.dtype)
    return torch.clamp(logits - tau, min=0)


def is_one_hot(ratios: Tensor, tol: float = ONE_HOT_TOL) -> Tensor:
    """Bool tensor (last dim reduced): whether each ratio vector is one-hot."""
    return ratios.amax(dim=-1) >= 1 - tol


def _face_centre(point: Tensor) -> Tensor:
    support = (point > 0).to(point.dtype)
    return support / support.sum(dim=-1, keepdim=True)


def sparsestmax(logits: Tensor, radius) -> Tensor:
    """SparsestMax of ``logits`` (..., K) at ``radius`` (scalar or (...,)).

    Guarantees: the result lies on the simplex; with ``radius == 0`` it equals
    :func:`sparsemax`; for ``radius >= sqrt((K - 1) / K)`` (0.8165 for K=3) it
    is one-hot up to :data:`ONE_HOT_TOL` for every input.  Where the released
    code divides by zero (the projection sits exactly at the centre of its
    face, e.g. equal logits) the push goes towards the vertex of the first
    largest coordinate, so the result is always finite.

    A few rows on the CPU (SSN's logits) run on the host with an exact
    Jacobian (:mod:`ssn_norm.ops.sparsestmax_host`), about six times
    faster; other inputs, and rows on a border between the pieces of the
    function, run the tensor code below.
    """
    if sparsestmax_host.accepts(logits, radius):
        out = sparsestmax_host.host_sparsestmax(logits, radius,
                                                sparsestmax_tensor)
        if out is not None:
            return out
    return sparsestmax_tensor(logits, radius)


def sparsestmax_tensor(logits: Tensor, radius) -> Tensor:
    """:func:`sparsestmax` as tensor code: any device, any size, traced
    by ``torch.compile``."""
    radius = torch.as_tensor(radius, dtype=logits.dtype, device=logits.device)
    radius_sq = (radius * radius).expand(logits.shape[:-1]).unsqueeze(-1)
    num = logits.shape[-1]

    point = sparsemax(logits)
    result = point
    done = torch.zeros_like(radius_sq, dtype=torch.bool)
    prev_centre = None
    # Each round that does not finish drops a coordinate from the support,
    # so after K - 1 rounds every unfinished point is a vertex, which a
    # further round would keep as it is: K - 1 rounds give the same result.
    for _ in range(num - 1):
        centre = _face_centre(point)
        if prev_centre is not None:
            radius_sq = (radius_sq - (prev_centre - centre).square().sum(
                dim=-1, keepdim=True)).clamp(min=0)
        offset = point - centre
        # Rounding leaves ``point`` slightly off the plane of its face (its
        # sum is not exactly 1); without removing that normal component a
        # push from near the centre would leave the simplex's plane.
        offset = offset - centre * offset.sum(dim=-1, keepdim=True)
        dist = offset.norm(dim=-1, keepdim=True)
        towards_vertex = F.one_hot(point.argmax(dim=-1), num).to(
            point.dtype) - centre
        direction = torch.where(
            dist > _CENTRE_EPS, offset / dist.clamp(min=_CENTRE_EPS),
            towards_vertex /
            towards_vertex.norm(dim=-1, keepdim=True).clamp(min=_CENTRE_EPS))
        # Far enough from the centre (or already a vertex): keep the point.
        stays = (dist.square() >= radius_sq) | is_one_hot(point).unsqueeze(-1)
        pushed = centre + radius_sq.sqrt() * direction
        leaves = (pushed < 0).any(dim=-1, keepdim=True)
        finished_here = ~done & (stays | ~leaves)
        result = torch.where(finished_here & stays, point, result)
        result = torch.where(finished_here & ~stays, pushed.clamp(0, 1),
                             result)
        done = done | finished_here
        # The rest left the simplex: project back and continue on the face.
        point = torch.where(done, point, sparsemax(pushed))
        prev_centre = centre
    return torch.where(done, result, point)


def ratios_with_freezing(
        logits: Tensor, radius: Tensor, mean_fixed: Tensor, var_fixed: Tensor,
        freeze: bool) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """SSN's ratios from its logits (2G, K): SparsestMax, frozen rows
    one-hot, each row on its own.

    Pure (no in-place update); :func:`ratios_with_freezing_tensor` is the
    form compiled as one graph.

    Args:
        logits: mean and variance logits (2G, K): the G mean rows (one per
            channel group; G = 1 for plain SSN), then the G variance rows.
        radius: SparsestMax radius (scalar or (1,)).
        mean_fixed, var_fixed: (G,) integer flags, rows already frozen.
        freeze: also freeze the rows whose SparsestMax is one-hot (within
            :data:`ONE_HOT_TOL`) now (training).

    Returns:
        The ratios (2G, K): a frozen row is the one-hot vector of its logits'
        argmax (zero gradient), the others SparsestMax; the logits to store
        (a newly frozen row becomes its one-hot vector, so the choice
        survives optimizer drift); the frozen flags (2G,) to store.  Small
        CPU rows run on the host
        (:func:`~ssn_norm.ops.sparsestmax_host.host_ratios_with_freezing`),
        which returns None for the logits and flags when no row froze now.
    """
    if (sparsestmax_host.accepts(logits, radius)
            and mean_fixed.device.type == 'cpu'):
        found = sparsestmax_host.host_ratios_with_freezing(
            logits, radius, mean_fixed, var_fixed, freeze, sparsestmax_tensor)
        if found is not None:
            return found
    return ratios_with_freezing_tensor(logits, radius, mean_fixed, var_fixed,
                                       freeze)


def ratios_with_freezing_tensor(
        logits: Tensor, radius: Tensor, mean_fixed: Tensor, var_fixed: Tensor,
        freeze: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`ratios_with_freezing` as tensor code: any device, traced by
    ``torch.compile``; always returns the logits and flags to store."""
    num = logits.shape[-1]
    soft = sparsestmax(logits, radius)
    fixed = torch.cat([mean_fixed, var_fixed]).bool().unsqueeze(-1)
    current = logits.detach()
    hot = F.one_hot(current.argmax(-1), num).to(soft.dtype)
    if freeze:
        settled = soft.detach()
        newly = is_one_hot(settled).unsqueeze(-1) & ~fixed
        hot_now = F.one_hot(settled.argmax(-1), num).to(soft.dtype)
        current = torch.where(newly, hot_now.to(current.dtype), current)
        hot = torch.where(newly, hot_now, hot)
        fixed = fixed | newly
    ratios = torch.where(fixed, hot, soft)
    return ratios, current, fixed.squeeze(-1).to(mean_fixed.dtype)
