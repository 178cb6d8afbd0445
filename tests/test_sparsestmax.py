"""SparsestMax and sparsemax against a slow, independent reference.

The reference follows the paper's recursion literally, one vector at a time
in numpy float64, and finds the sparsemax threshold by bisection instead of
sorting, so it shares no code path with ``ssn_norm.ops``.
"""
import math

import numpy as np
import pytest
import torch

from ssn_norm import max_radius
from ssn_norm.ops import ONE_HOT_TOL, is_one_hot, sparsemax, sparsestmax


def ref_sparsemax(z: np.ndarray) -> np.ndarray:
    """Projection onto the simplex: threshold tau by bisection."""
    lo, hi = z.max() - 1.0, z.max()
    for _ in range(100):
        mid = (lo + hi) / 2
        if np.maximum(z - mid, 0).sum() > 1:
            lo = mid
        else:
            hi = mid
    return np.maximum(z - (lo + hi) / 2, 0)


def ref_sparsestmax(z: np.ndarray, radius: float, prev_centre=None):
    """The paper's recursion for one generic vector (no ties at a centre)."""
    point = ref_sparsemax(z)
    support = point > 0
    if support.sum() == 1:
        return point
    centre = support / support.sum()
    if prev_centre is not None:
        radius = math.sqrt(
            max(radius**2 - ((centre - prev_centre)**2).sum(), 0.0))
    dist = np.linalg.norm(point - centre)
    if dist >= radius:
        return point
    pushed = centre + radius * (point - centre) / dist
    if pushed.min() < 0:
        return ref_sparsestmax(pushed, radius, centre)
    return pushed


def assert_on_simplex(p: torch.Tensor, atol: float) -> None:
    assert torch.isfinite(p).all()
    assert (p >= 0).all() and (p <= 1).all()
    torch.testing.assert_close(
        p.sum(-1), torch.ones(p.shape[:-1], dtype=p.dtype), atol=atol, rtol=0)


def adversarial_logits(num: int) -> torch.Tensor:
    """Ties, faces, huge and tiny gaps: inputs where naive code breaks."""
    rows = [
        [0.0] * num,
        [1.0] * num,
        [-1e4] * num,
        [1.0, 1.0] + [0.0] * (num - 2),
        [0.0, 1.0, 1.0] + [0.0] * (num - 3),
        [1.0 + 1e-7] + [1.0] * (num - 1),
        [1.0] + [1.0 - 1e-7] * (num - 1),
        [1e6] + [-1e6] * (num - 1),
        [3.0, 0.5] + [-2.0] * (num - 2),
        [0.5, 0.5 - 1e-3] + [0.5 - 2e-3] * (num - 2),
        list(range(num)),
        [1.0 / 3] * (num - 1) + [0.0],
    ]
    return torch.tensor([r[:num] for r in rows], dtype=torch.float64)


@pytest.mark.parametrize('num', [2, 3, 4])
def test_sparsemax_matches_bisection(num, device):
    z = torch.randn(200, num, dtype=torch.float64) * 2
    out = sparsemax(z.to(device)).cpu()
    ref = np.stack([ref_sparsemax(row) for row in z.numpy()])
    torch.testing.assert_close(out, torch.from_numpy(ref), atol=1e-12, rtol=0)
    # Exact zeros outside the support.
    assert torch.equal(out == 0, torch.from_numpy(ref) == 0)


@pytest.mark.parametrize('num', [2, 3, 4])
@pytest.mark.parametrize('radius', [0.0, 0.1, 0.3, 0.5, 0.7, 0.8, 0.9])
def test_sparsestmax_matches_paper_recursion(num, radius, device):
    z = torch.randn(
        150, num, dtype=torch.float64) * torch.tensor(
            [0.05, 0.5, 3.0], dtype=torch.float64).repeat(50).unsqueeze(-1)
    out = sparsestmax(z.to(device), radius).cpu()
    ref = np.stack([ref_sparsestmax(row, radius) for row in z.numpy()])
    torch.testing.assert_close(out, torch.from_numpy(ref), atol=1e-9, rtol=0)
    assert_on_simplex(out, atol=1e-12)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('num', [2, 3, 4])
def test_radius_zero_is_sparsemax(dtype, num, device):
    z = torch.cat([torch.randn(100, num), adversarial_logits(num).float()])
    z = z.to(device, dtype)
    assert torch.equal(sparsestmax(z, 0.0), sparsemax(z))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('num', [2, 3, 4])
def test_one_hot_for_every_input_beyond_max_radius(dtype, num, device):
    assert max_radius(num) == pytest.approx(math.sqrt((num - 1) / num))
    assert max_radius() == pytest.approx(0.816496580927726)
    z = torch.cat([
        torch.randn(2000, num, dtype=torch.float64) *
        torch.logspace(-6, 3, 2000, dtype=torch.float64).unsqueeze(-1),
        adversarial_logits(num)
    ]).to(device, dtype)
    for radius in (max_radius(num), 0.9, 1.0, 5.0):
        out = sparsestmax(z, radius)
        assert_on_simplex(out, atol=1e-6)
        assert is_one_hot(out).all(), (radius, z[~is_one_hot(out)])


def test_not_one_hot_just_below_max_radius():
    # The centre of the simplex is the point that needs the full radius.
    out = sparsestmax(torch.zeros(1, 3, dtype=torch.float64), 0.8)
    assert not is_one_hot(out).any()


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_equal_logits_are_finite_and_defined(dtype):
    z = torch.full((4, 3), 2.5, dtype=dtype)
    torch.testing.assert_close(
        sparsestmax(z, 0.0), torch.full((4, 3), 1 / 3, dtype=dtype))
    # Pushed from the centre towards the first largest coordinate by r.
    out = sparsestmax(z, 0.3)
    step = 0.3 / math.sqrt(6)
    expected = torch.tensor([1 / 3 + 2 * step, 1 / 3 - step, 1 / 3 - step],
                            dtype=dtype).expand(4, 3)
    torch.testing.assert_close(out, expected)
    # A tie on an edge: the projection is the edge's centre.
    out = sparsestmax(torch.tensor([[2., 2., 1.]], dtype=dtype), 0.3)
    torch.testing.assert_close(
        out,
        torch.tensor(
            [[0.5 + 0.3 / math.sqrt(2), 0.5 - 0.3 / math.sqrt(2), 0.]],
            dtype=dtype))
    z = torch.ones(1, 3, dtype=dtype, requires_grad=True)
    sparsestmax(z, 0.3).square().sum().backward()
    assert torch.isfinite(z.grad).all()


def test_near_vertex_rounding_counts_as_one_hot():
    # Pushed points reach a vertex only up to rounding; they must be clamped
    # onto the simplex and count as one-hot within the tolerance.
    z = torch.ones(1, 3)
    just_short = sparsestmax(z, max_radius() - 1e-7)
    assert_on_simplex(just_short, atol=1e-6)
    assert just_short.max() < 1 and just_short.max() > 1 - ONE_HOT_TOL
    assert is_one_hot(just_short).all()
    exact = sparsestmax(torch.ones(1, 3), torch.tensor(max_radius()))
    assert_on_simplex(exact, atol=1e-6)
    assert is_one_hot(exact).all()
    # The tolerance itself.
    vec = torch.tensor([[1 - ONE_HOT_TOL / 2, ONE_HOT_TOL / 2, 0.]])
    assert is_one_hot(vec).all()
    vec = torch.tensor([[1 - 2 * ONE_HOT_TOL, 2 * ONE_HOT_TOL, 0.]])
    assert not is_one_hot(vec).any()


@pytest.mark.parametrize(
    'logits, radius',
    [
        ([0.3, 0.1, -0.2], 0.1),  # interior, already beyond r: sparsemax
        ([0.3, 0.1, -0.2], 0.3),  # pushed, stays inside the simplex
        ([0.3, 0.1, -0.2], 0.5),  # pushed out, recursion onto an edge
        ([0.9, 0.4, -1.0], 0.2),  # sparsemax on an edge, pushed along it
        ([0.2, -0.1, 0.05, -0.3], 0.4),  # K = 4
    ])
def test_gradcheck_away_from_kinks(logits, radius):
    z = torch.tensor([logits], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: sparsestmax(t, radius), (z, ), eps=1e-6, atol=1e-8)


def test_gradcheck_sparsemax():
    z = torch.tensor([[0.3, 0.1, -0.2], [0.9, 0.4, -1.0]],
                     dtype=torch.float64,
                     requires_grad=True)
    assert torch.autograd.gradcheck(sparsemax, (z, ), eps=1e-6, atol=1e-8)


def test_batched_input_equals_row_by_row(device):
    z = torch.randn(5, 7, 3, dtype=torch.float64, device=device)
    out = sparsestmax(z, 0.45)
    rows = torch.stack([sparsestmax(row, 0.45) for row in z.view(-1, 3)])
    assert out.shape == (5, 7, 3)
    torch.testing.assert_close(out.view(-1, 3), rows, atol=1e-15, rtol=0)
    # One radius per vector.
    radii = torch.rand(5, 7, dtype=torch.float64, device=device)
    out = sparsestmax(z, radii)
    rows = torch.stack([
        sparsestmax(row, float(r))
        for row, r in zip(z.view(-1, 3), radii.view(-1))
    ])
    torch.testing.assert_close(out.view(-1, 3), rows, atol=1e-15, rtol=0)


# ------------------------------------ the host form against the tensor code
def _host_and_tensor(logits, radius, grad):
    from ssn_norm.ops import sparsestmax_host
    results = []
    for fn in (lambda z: sparsestmax_host.sparsestmax(z, radius),
               lambda z: sparsestmax(z, radius)):
        z = logits.clone().requires_grad_()
        out = fn(z)
        if out is None:
            return None
        dz, = torch.autograd.grad(out, z, grad)
        results.append((out.detach(), dz))
    return results


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_host_form_equals_tensor_code_with_its_gradient(dtype):
    """Random rows sit inside a piece: the host serves every one of them,
    with the tensor code's values and autograd's gradient (in float64;
    fp32 rows against the float64 tensor code, relative to the gradient's
    size: the host computes in float64, the tensor code in fp32)."""
    from ssn_norm.ops import sparsestmax_host
    gen = torch.Generator().manual_seed(0)
    served = 0
    for trial in range(600):
        num = 2 + trial % 3
        scale = (0.3, 1.0, 3.0)[trial % 7 % 3]
        radius = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)[trial % 6]
        logits = (torch.randn(2, num, generator=gen, dtype=torch.float64) *
                  scale).to(dtype)
        grad = torch.randn(2, num, generator=gen, dtype=torch.float64)
        radius = torch.tensor(radius, dtype=dtype)
        leaf = logits.clone().requires_grad_()
        host = sparsestmax_host.sparsestmax(leaf, radius)
        if host is None:
            continue
        served += 1
        host_grad, = torch.autograd.grad(host, leaf, grad.to(dtype))
        leaf = logits.double().requires_grad_()
        tensor = sparsestmax(leaf, radius.double())
        tensor_grad, = torch.autograd.grad(tensor, leaf, grad)
        assert host.dtype == host_grad.dtype == dtype
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        torch.testing.assert_close(host.double(), tensor, rtol=0, atol=tol)
        size = max(1.0, tensor_grad.abs().max().item())
        torch.testing.assert_close(
            host_grad.double(), tensor_grad, rtol=0, atol=tol * size)
    assert served >= 590


@pytest.mark.parametrize(
    'logits',
    [
        [1.0, 1.0, 1.0],  # SSN's start: the centre of the simplex
        [1.0, 0.0, 0.0],  # frozen: one-hot, coordinates on the support border
        [0.5, 0.0, 0.0],  # unfreeze('soften')
        [2.0, 2.0, -1.0],  # a tie on an edge
        [0.2, 0.2, 0.2, 0.2],
    ])
@pytest.mark.parametrize('radius', [0.0, 0.2, 0.5, 0.9])
def test_special_rows_equal_tensor_code(logits, radius):
    """Special rows the layers meet: host form or tensor code (where the
    host declines), SSN's ratios have the tensor code's value and
    gradient."""
    from ssn_norm.ops.ratios import sparsestmax_ratios
    z = torch.tensor([logits, logits[::-1]], dtype=torch.float64)
    grad = torch.linspace(-1, 1, z.numel(), dtype=torch.float64).view_as(z)
    radius = torch.tensor(radius, dtype=torch.float64)
    fixed = torch.zeros(2, dtype=torch.long)
    outs = []
    for host in (True, False):
        leaf = z.clone().requires_grad_()
        out = sparsestmax_ratios(leaf, radius, fixed, False, host).ratios
        outs.append((out.detach(), *torch.autograd.grad(out, leaf, grad)))
    for actual, expected in zip(*outs):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


def test_host_form_double_backward_is_exact():
    from ssn_norm.ops import sparsestmax_host
    logits = torch.tensor([[0.3, -0.2, 0.1], [1.0, 0.2, -0.5]],
                          dtype=torch.float64,
                          requires_grad=True)
    radius = torch.tensor(0.4, dtype=torch.float64)
    assert sparsestmax_host.accepts(logits, radius)

    def host(z):
        return sparsestmax_host.sparsestmax(z, radius)

    assert torch.autograd.gradcheck(host, (logits, ))
    assert torch.autograd.gradgradcheck(host, (logits, ))


@pytest.mark.parametrize('freeze', [True, False])
def test_freezing_on_the_host_form_equals_tensor_code(freeze):
    """SSN's ratios with freezing (defined once, in tensor code) on the
    host form's SparsestMax: the tensor code's ratios, gradients, newly
    frozen rows and their one-hot vectors."""
    from ssn_norm.ops.ratios import sparsestmax_ratios
    gen = torch.Generator().manual_seed(1)
    froze = 0
    for trial in range(300):
        num, groups = 2 + trial % 3, 1 + trial % 2
        logits = torch.randn(
            2 * groups, num, generator=gen,
            dtype=torch.float64) * (0.3, 1.0, 4.0)[trial % 3]
        radius = torch.tensor([(0.0, 0.3, 0.6, 0.9)[trial % 4]],
                              dtype=torch.float64)
        flags = torch.randint(0, 2, (2 * groups, ), generator=gen)
        grad = torch.randn(2 * groups, num, generator=gen, dtype=torch.float64)
        results = []
        for host in (True, False):
            leaf = logits.clone().requires_grad_()
            found = sparsestmax_ratios(leaf, radius, flags, freeze, host)
            dz, = torch.autograd.grad(found.ratios, leaf, grad)
            results.append((found, dz))
        (host, host_grad), (tensor, tensor_grad) = results
        torch.testing.assert_close(
            host.ratios, tensor.ratios, rtol=0, atol=1e-12)
        torch.testing.assert_close(host_grad, tensor_grad, rtol=0, atol=1e-12)
        if freeze:
            assert torch.equal(host.newly, tensor.newly)
            if host.newly.any():
                froze += 1
                rows = host.newly
                assert torch.equal(host.hot[rows], tensor.hot[rows])
        else:
            assert host.newly is None
    assert froze > 20 if freeze else froze == 0


def test_freezing_double_backward_is_exact():
    """Frozen rows stay constant under create_graph=True as well."""
    from ssn_norm.ops.ratios import sparsestmax_ratios
    logits = torch.tensor([[0.3, -0.2, 0.1], [1.0, 0.2, -0.5]],
                          dtype=torch.float64,
                          requires_grad=True)
    radius = torch.tensor([0.4], dtype=torch.float64)
    for flags in ((0, 0), (1, 0), (0, 1)):

        def ratios(z, flags=torch.tensor(flags)):
            return sparsestmax_ratios(z, radius, flags, True, True).ratios

        assert torch.autograd.gradcheck(ratios, (logits, ))
        assert torch.autograd.gradgradcheck(ratios, (logits, ))


def test_host_form_serves_only_small_cpu_rows_outside_tracers():
    from ssn_norm.ops import sparsestmax_host
    small = torch.zeros(2, 3)
    assert sparsestmax_host.accepts(small, 0.3)
    assert not sparsestmax_host.accepts(small.half(), 0.3)
    assert not sparsestmax_host.accepts(torch.zeros(65, 3)[:, :1], 0.3)
    assert not sparsestmax_host.accepts(torch.zeros(30, 3), 0.3)
    assert not sparsestmax_host.accepts(small,
                                        torch.tensor(0.3, requires_grad=True))
    assert not sparsestmax_host.accepts(torch.zeros(2, 3, device='meta'), 0.3)


# ------------------------------------------------------ low precision
def test_fp16_logits_of_the_issue():
    """``sparsestmax`` of these fp16 logits raised ``index -1 is out of
    bounds`` (its centre tolerance underflowed to 0 in fp16): fp16 is
    computed in fp32 and rounded, a point of the simplex."""
    z = torch.tensor([-0.1425, -0.0667, 0.9463])
    for radius in (0.0, 0.3):
        out = sparsestmax(z.half(), radius)
        assert out.dtype == torch.float16
        torch.testing.assert_close(
            out.float(), sparsestmax(z, radius), rtol=0, atol=1e-3)
        assert_on_simplex(out.float(), atol=1e-3)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_logits_are_computed_in_fp32(dtype):
    z = torch.randn(500, 3) * torch.logspace(-3, 1, 500).unsqueeze(-1)
    for radius in (0.0, 0.3, 0.9):
        out = sparsestmax(z.to(dtype), radius)
        want = sparsestmax(z.to(dtype).float(), radius)
        assert torch.equal(out, want.to(dtype))
        assert torch.isfinite(out).all()
    assert torch.equal(
        sparsemax(z.to(dtype)),
        sparsemax(z.to(dtype).float()).to(dtype))


def test_a_nan_logit_gives_a_nan_row_not_an_error():
    z = torch.tensor([[0.1, float('nan'), 0.2], [0.3, 0.1, 0.0]])
    for radius in (0.0, 0.3):
        out = sparsestmax(z, radius)
        assert out[0].isnan().all() and torch.isfinite(out[1]).all()
