"""SparsestMax of a few small rows on the host, with its exact Jacobian.

A second form of :func:`ssn_norm.ops.sparsestmax.sparsestmax`, kept for
speed and tested against it (``tests/test_sparsestmax.py``).  SSN computes
SparsestMax of two rows of three logits per layer and step; as tensor code
that is about a hundred tiny ops forward and as many backward, more than
the normalisation itself on small maps.  Here the same algorithm runs in
Python floats (float64) on CPU rows and records the Jacobian of the piece
it ends on; the backward is one batched vector-Jacobian product
(docs/benchmarks.md lists the measured gain).

SparsestMax is piecewise smooth.  Inside a piece the derivative is unique,
so the Jacobian here equals what autograd finds through the tensor code.
On a border between pieces (a coordinate at the support's edge, a point
at distance exactly ``radius`` from its face's centre, a push landing on
the simplex's boundary, ratios at the one-hot tolerance) autograd's
answer depends on tie-breaking; there :func:`sparsestmax` returns None and
the caller runs the tensor code.  A backward with ``create_graph=True``
differentiates the tensor code, so double backward is exact.
"""
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .sparsestmax import ONE_HOT_TOL
from .sparsestmax import sparsestmax as reference

__all__ = ['MAX_HOST_ELEMENTS', 'accepts', 'sparsestmax']

#: Largest ``logits.numel()`` worth doing in Python (SSN: 2·K per layer,
#: 2·G·K with groups).
MAX_HOST_ELEMENTS = 64

# Closer than this (relative to 1, the simplex's scale) to a border between
# pieces: leave the case to the tensor code.
_MARGIN = 1e-6

Matrix = List[List[float]]


def accepts(logits: Tensor, radius) -> bool:
    """Whether :func:`sparsestmax` may serve this call: small CPU fp32/fp64
    rows, no tracer watching, a radius that needs no gradient."""
    return (logits.device.type == 'cpu'
            and logits.dtype in (torch.float32, torch.float64)
            and logits.dim() >= 1 and 0 < logits.numel() <= MAX_HOST_ELEMENTS
            and logits.shape[-1] > 1
            and not (isinstance(radius, Tensor) and radius.requires_grad)
            and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
            and not torch.onnx.is_in_onnx_export())


def _matmul(a: Matrix, b: Matrix) -> Matrix:
    cols = list(zip(*b))
    return [[sum(x * y for x, y in zip(row, col)) for col in cols]
            for row in a]


def _sparsemax(v: List[float]) -> Optional[Tuple[List[float], Matrix]]:
    """Projection onto the simplex and its Jacobian; None near a border.

    Exactly on the support's border (a coordinate equal to the threshold,
    as for one-hot logits) the Jacobian is the tensor code's: the clamp
    passes the gradient of a coordinate at 0, the threshold depends on the
    support only.
    """
    top = max(v)
    # Measured from the largest entry, as the tensor code does.
    v = [x - top for x in v]
    ordered = sorted(v, reverse=True)
    total, size, cumsum = 0.0, 0, 0.0
    for k, z in enumerate(ordered, 1):
        cumsum += z
        if 1 + k * z > cumsum:
            size, total = k, cumsum
    tau = (total - 1) / size
    gaps = [x - tau for x in v]
    if any(0 < abs(g) < _MARGIN for g in gaps):
        return None
    support = [1.0 if g > 0 else 0.0 for g in gaps]
    passes = [1.0 if g >= 0 else 0.0 for g in gaps]
    jac = [[
        mi * ((1.0 if i == j else 0.0) - sj / size)
        for j, sj in enumerate(support)
    ] for i, mi in enumerate(passes)]
    return [max(g, 0.0) for g in gaps], jac


def _row(z: List[float],
         radius_sq: float) -> Optional[Tuple[List[float], Matrix]]:
    """SparsestMax of one row and its Jacobian (the tensor code's steps)."""
    num = len(z)
    found = _sparsemax(z)
    if found is None:
        return None
    point, jac = found
    prev_centre = None
    for _ in range(num - 1):
        support = [1.0 if p > 0 else 0.0 for p in point]
        count = sum(support)
        centre = [s / count for s in support]
        if prev_centre is not None:
            radius_sq = max(
                radius_sq - sum(
                    (a - b)**2 for a, b in zip(prev_centre, centre)), 0.0)
        raw = [p - c for p, c in zip(point, centre)]
        off_plane = sum(raw)
        offset = [r - c * off_plane for r, c in zip(raw, centre)]
        dist = math.sqrt(sum(o * o for o in offset))
        top = max(point)
        if abs(top - (1 - ONE_HOT_TOL)) < _MARGIN:
            return None
        if top >= 1 - ONE_HOT_TOL:
            return point, jac  # a vertex stays
        if radius_sq == 0 or dist * dist >= radius_sq + _MARGIN:
            return point, jac  # far enough from the centre
        if dist * dist > radius_sq - _MARGIN or 0 < dist < _MARGIN:
            return None
        rho = math.sqrt(radius_sq)
        if dist > 0:
            unit = [o / dist for o in offset]
            # d(offset) = (I - c 1ᵀ) d(point); d(unit) = (I - u uᵀ)/|d|.
            plane = [[(1.0 if i == j else 0.0) - centre[i] for j in range(num)]
                     for i in range(num)]
            normalise = [[
                ((1.0 if i == j else 0.0) - unit[i] * unit[j]) * rho / dist
                for j in range(num)
            ] for i in range(num)]
            jac = _matmul(normalise, _matmul(plane, jac))
        else:
            # At the centre: towards the vertex of the first largest
            # coordinate, a direction that does not depend on the logits.
            first = point.index(top)
            toward = [(1.0 if i == first else 0.0) - c
                      for i, c in enumerate(centre)]
            norm = math.sqrt(sum(t * t for t in toward))
            unit = [t / norm for t in toward]
            jac = [[0.0] * num for _ in range(num)]
        pushed = [c + rho * u for c, u in zip(centre, unit)]
        # Coordinates off the face stay exactly 0 (no border).
        if any(0 < abs(q) < _MARGIN for q in pushed):
            return None
        if min(pushed) >= 0:
            return [min(q, 1.0) for q in pushed], jac
        found = _sparsemax(pushed)
        if found is None:
            return None
        point, step = found
        jac = _matmul(step, jac)
        prev_centre = centre
    return point, jac


class _HostSparsestMax(torch.autograd.Function):
    """Output and Jacobian from the host; backward ``gᵀJ`` per row, or the
    tensor code differentiated under ``create_graph=True``."""

    @staticmethod
    def forward(ctx, logits: Tensor, radius: Tensor, out: Tensor,
                jac: Tensor) -> Tensor:
        ctx.save_for_backward(logits, radius, jac)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, radius, jac = ctx.saved_tensors
        if torch.is_grad_enabled():
            # The saved logits carry their own graph: the gradient found is
            # a differentiable function of them and of ``grad``.
            found, = torch.autograd.grad(
                reference(logits, radius), logits, grad, create_graph=True)
            return found, None, None, None
        rows = jac.shape[0]
        flat = grad.reshape(rows, 1, -1).to(jac.dtype)
        found = torch.bmm(flat, jac).reshape(grad.shape)
        return found.to(logits.dtype), None, None, None


def sparsestmax(logits: Tensor,
                radius,
                skip: Optional[Tensor] = None) -> Optional[Tensor]:
    """SparsestMax of ``logits`` (..., K) at ``radius`` (scalar, or one per
    row), or None where a row sits on a border between pieces (see the
    module docstring).  Rows where ``skip`` (...,) is set are not computed:
    they hold zeros, with zero gradient (the caller replaces them).  Only
    for inputs :func:`accepts`.
    """
    num = logits.shape[-1]
    rows = logits.detach().reshape(-1, num).tolist()
    radius = torch.as_tensor(radius, dtype=logits.dtype, device='cpu')
    radii = radius.expand(logits.shape[:-1]).reshape(-1).tolist()
    skipped = ([False] *
               len(rows) if skip is None else skip.reshape(-1).tolist())
    zero = [[0.0] * num for _ in range(num)]
    outs, jacs = [], []
    for z, r, left_out in zip(rows, radii, skipped):
        found = ([0.0] * num, zero) if left_out else _row(z, r * r)
        if found is None:
            return None
        outs.append(found[0])
        jacs.append(found[1])
    out = torch.tensor(outs, dtype=logits.dtype).reshape(logits.shape)
    if not (torch.is_grad_enabled() and logits.requires_grad):
        return out
    jac = torch.tensor(jacs, dtype=torch.float64)
    return _HostSparsestMax.apply(logits, radius, out, jac)
