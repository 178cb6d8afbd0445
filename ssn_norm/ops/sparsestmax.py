"""Sparsemax, SparsestMax and the layers' ratios, vectorised.

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
data-dependent Python control flow, no host synchronisation, any device.  The
branches a ``torch.where`` does not take are computed on safe values, so
first and second derivatives are finite everywhere (zero where the function
is locally constant, as on a one-hot row).  Low-precision logits are
computed in fp32 (the centre tolerance and the one-hot test underflow in
fp16).

This is the reference: :mod:`ssn_norm.ops.sparsestmax_host` is a faster
form for a few rows on the CPU, tested against it.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['ONE_HOT_TOL', 'is_one_hot', 'sparsemax', 'sparsestmax']

#: Ratios whose largest entry is within this of 1 count as one-hot.  Pushed
#: points reach a vertex only up to float rounding, so exact equality (as in
#: the released code) would leave layers unfrozen forever.
ONE_HOT_TOL = 1e-5

# Below this distance a point is taken to be the centre of its face.
_CENTRE_EPS = 1e-12


def working(t: Tensor) -> Tensor:
    """``t`` in fp32, or fp64 for fp64: where SparsestMax computes."""
    if t.dtype in (torch.float32, torch.float64):
        return t
    return t.to(torch.promote_types(t.dtype, torch.float32))


def sparsemax(logits: Tensor) -> Tensor:
    """Euclidean projection of ``logits`` onto the simplex (Martins et al.).

    Returns a tensor of ``logits``' shape and dtype whose last dimension is
    non-negative and sums to one; exact zeros outside the support.  A NaN
    logit gives a NaN row.
    """
    return _sparsemax(working(logits)).to(logits.dtype)


def _sparsemax(logits: Tensor) -> Tensor:
    num = logits.shape[-1]
    # The projection is shift invariant; measuring from the largest logit
    # makes a single-coordinate support exactly 1 in low precision too.
    logits = logits - logits.detach().amax(dim=-1, keepdim=True)
    z_sorted, _ = torch.sort(logits, dim=-1, descending=True)
    cumsum = z_sorted.cumsum(dim=-1)
    k = torch.arange(1, num + 1, device=logits.device, dtype=logits.dtype)
    in_support = 1 + k * z_sorted > cumsum
    # At least the largest coordinate (only a NaN row finds none).
    support_size = in_support.sum(dim=-1, keepdim=True).clamp(min=1)
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
    largest coordinate, so the result is always finite.  fp16/bf16 logits
    are computed in fp32 and the result rounded to their dtype.
    """
    return _sparsestmax(working(logits), radius).to(logits.dtype)


def _sparsestmax(logits: Tensor, radius) -> Tensor:
    radius = torch.as_tensor(radius, dtype=logits.dtype, device=logits.device)
    radius_sq = (radius * radius).expand(logits.shape[:-1]).unsqueeze(-1)
    num = logits.shape[-1]

    point = _sparsemax(logits)
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
        dist_sq = offset.square().sum(dim=-1, keepdim=True)
        away = dist_sq > _CENTRE_EPS**2
        # sqrt and the division see 1 where the point is at the centre, so
        # their (unused) derivatives stay finite there.
        dist = torch.where(away, dist_sq, torch.ones_like(dist_sq)).sqrt()
        towards_vertex = F.one_hot(point.argmax(dim=-1), num).to(
            point.dtype) - centre
        direction = torch.where(
            away, offset / dist, towards_vertex /
            towards_vertex.norm(dim=-1, keepdim=True).clamp(min=_CENTRE_EPS))
        # Far enough from the centre (or already a vertex): keep the point.
        stays = (dist_sq >= radius_sq) | is_one_hot(point).unsqueeze(-1)
        pushed = centre + radius_sq.sqrt() * direction
        leaves = (pushed < 0).any(dim=-1, keepdim=True)
        finished_here = ~done & (stays | ~leaves)
        result = torch.where(finished_here & stays, point, result)
        result = torch.where(finished_here & ~stays, pushed.clamp(0, 1),
                             result)
        done = done | finished_here
        # The rest left the simplex: project back and continue on the face.
        point = torch.where(done, point, _sparsemax(pushed))
        prev_centre = centre
    return torch.where(done, result, point)
