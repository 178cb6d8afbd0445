"""The C++ kernels of SN/SSN (``ssn_norm.ops.native.switchable_forward`` /
``switchable_backward``) against a reference written here from the
formulas, and the layers' use of them (which calls they serve, which fall
back)."""
import pytest
import torch
import torch.nn.functional as F

from ssn_norm import SN, SSN, SyncSN
from ssn_norm.ops import moments, native
from ssn_norm.ops import switchable_function as sf

pytestmark = pytest.mark.skipif(
    not native.available(), reason=f'C++ kernels: {native.UNAVAILABLE_REASON}')


def reference(x, weight, bias, ratios, normalizers, gn_groups=None, eps=1e-5):
    """SN in training written out: unbiased IN moments; LN, GN (per sample
    over channel groups) and BN (over the batch) from ``var + mean²``;
    ``ratios`` (2, K) or (2, K, C)."""
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    length = x3.shape[-1]
    mean_in = x3.mean(-1)
    var_in = (((x3 - mean_in.unsqueeze(-1))**2).sum(-1) /
              max(length - 1, 1))
    sq_in = var_in + mean_in**2

    def over_groups(t, groups):
        g = t.reshape(n, groups, -1).mean(-1, keepdim=True)
        return g.expand(n, groups, c // groups).reshape(n, c)

    stats = {'IN': (mean_in, var_in)}
    for name, reduce in (('LN', lambda t: over_groups(t, 1)),
                         ('GN', lambda t: over_groups(t, gn_groups or 1)),
                         ('BN', lambda t: t.mean(0).expand(n, c))):
        mean, sq = reduce(mean_in), reduce(sq_in)
        stats[name] = (mean, (sq - mean**2).clamp(min=0))
    if ratios.dim() == 2:
        ratios = ratios.unsqueeze(-1).expand(2, len(normalizers), c)
    mean = sum(ratios[0, k] * stats[m][0] for k, m in enumerate(normalizers))
    var = sum(ratios[1, k] * stats[m][1] for k, m in enumerate(normalizers))
    out = (x3 - mean.unsqueeze(-1)) / torch.sqrt(var.unsqueeze(-1) + eps)
    return (out * weight.view(1, -1, 1) + bias.view(1, -1, 1)).view_as(x)


CASES = [
    (('IN', 'LN', 'BN'), None, False),
    (('IN', 'LN'), None, False),
    (('BN', ), None, False),
    (('IN', 'LN', 'BN', 'GN'), 4, False),
    (('LN', 'GN'), 2, True),
    (('IN', 'LN', 'BN'), None, True),
]
SHAPES = [(3, 8, 5, 7), (2, 8, 1, 1), (1, 8, 6), (4, 8, 49), (2, 8, 2, 3, 3)]


def kernel_run(x, weight, bias, ratios, normalizers, gn_groups, grad):
    table = moments.member_table(normalizers, gn_groups)
    groups = native.member_groups(table)
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1).contiguous()
    out, var_in, mean_in, batch = native.switchable_forward(
        x3, weight, bias, ratios, groups, 1e-5)
    grad_x, *grads = native.switchable_backward(
        grad.reshape(x3.shape).contiguous(), x3, var_in, mean_in, weight,
        bias, ratios, groups, 1e-5, True)
    return out.view_as(x), batch, (grad_x.view_as(x), *grads)


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-12),
                                       (torch.float32, 2e-5)])
@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('normalizers,gn_groups,per_channel', CASES)
def test_forward_and_backward_match_the_formulas(dtype, tol, shape,
                                                 normalizers, gn_groups,
                                                 per_channel):
    torch.manual_seed(0)
    c, k = shape[1], len(normalizers)
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 1).to(dtype)
    weight = torch.rand(c, dtype=dtype) + 0.5
    bias = torch.randn(c, dtype=dtype)
    ratios = torch.randn((2, k, c) if per_channel else (2, k),
                         dtype=dtype).softmax(1)
    grad = torch.randn(shape, dtype=dtype)
    out, batch, (grad_x, grad_w, grad_b, grad_r) = kernel_run(
        x, weight, bias, ratios, normalizers, gn_groups, grad)
    leaves = [t.double().requires_grad_() for t in (x, weight, bias, ratios)]
    expected = reference(*leaves, normalizers, gn_groups)
    expected_grads = torch.autograd.grad(expected, leaves, grad.double())
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(
        out.double(), expected, rtol=0, atol=tol * scale)
    for actual, want in zip((grad_x, grad_w, grad_b, grad_r),
                            expected_grads):
        assert actual.dtype == dtype and actual.shape == want.shape
        size = max(1.0, want.abs().max().item())
        torch.testing.assert_close(
            actual.double(), want, rtol=0, atol=tol * size * 10)
    if 'BN' not in normalizers:
        assert batch is None
    else:
        x3 = x.double().reshape(shape[0], c, -1)
        mean_bn = x3.mean(-1).mean(0)
        var_in = x3.var(-1, correction=int(x3.shape[-1] > 1))
        sq_bn = (var_in + x3.mean(-1)**2).mean(0)
        for actual, want in zip(batch, (mean_bn, sq_bn,
                                        (sq_bn - mean_bn**2).clamp(min=0))):
            torch.testing.assert_close(
                actual.double(), want, rtol=0, atol=tol * 10)


def test_bad_input_is_rejected_with_the_reason():
    from ssn_norm import _ext
    x = torch.randn(2, 4, 5)
    ones, ratios = torch.ones(4), torch.full((2, 3), 1 / 3)
    with pytest.raises(RuntimeError, match='contiguous'):
        _ext.switchable_forward(x.transpose(1, 2), ones, ones, ratios,
                                      [-1, 1, 0], 1e-5)
    with pytest.raises(RuntimeError, match='float32 or float64'):
        _ext.switchable_forward(x.half(), ones, ones, ratios,
                                      [-1, 1, 0], 1e-5)
    with pytest.raises(RuntimeError, match='divisor of 4'):
        _ext.switchable_forward(x, ones, ones, ratios, [-1, 3, 0], 1e-5)
    with pytest.raises(RuntimeError, match=r'ratios must be \(2, 2\)'):
        _ext.switchable_forward(x, ones, ones, ratios, [-1, 1], 1e-5)


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []
    forward = native.switchable_forward

    def spy(*args):
        calls.append(args[0].shape)
        return forward(*args)

    monkeypatch.setattr(native, 'switchable_forward', spy)
    return calls


@pytest.mark.parametrize('cls', [SN, SSN])
def test_layers_train_through_the_kernel(cls, kernel_calls):
    """SN and SSN in training on the default ``compiled`` backend: one
    kernel call per forward, the autograd reference's output, gradients and running
    statistics (fp64)."""
    torch.manual_seed(0)
    layers = [cls(6).double() for _ in range(2)]
    layers[1].load_state_dict(layers[0].state_dict())
    for layer in layers:
        with torch.no_grad():
            layer.mean_weight.copy_(torch.tensor([0.3, -0.2, 0.5]))
            layer.var_weight.copy_(torch.tensor([-0.4, 0.6, 0.1]))
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64)
    results = []
    for layer, backend in zip(layers, ('compiled', 'autograd')):
        leaf = x.clone().requires_grad_()
        with sf.use_backend(backend):
            out = layer(leaf)
        out.backward(torch.cos(out.detach()))
        results.append([out.detach(), leaf.grad, layer.running_mean,
                        layer.running_var] +
                       [p.grad for p in layer.parameters()])
    assert kernel_calls == [(3, 6, 20)]
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize('cls', [SN, SSN])
def test_layers_evaluate_through_the_kernel(cls, kernel_calls):
    """Eval with running statistics, and a training forward without
    gradient (which still records them): one kernel call each, the
    autograd reference's output and running statistics (fp64)."""
    torch.manual_seed(0)
    layers = [cls(6, normalizers=('IN', 'BN', 'GN'), gn_groups=3).double()
              for _ in range(2)]
    layers[1].load_state_dict(layers[0].state_dict())
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64)
    results = []
    for layer, backend in zip(layers, ('compiled', 'autograd')):
        with sf.use_backend(backend), torch.no_grad():
            trained = layer(x)
            layer.eval()
            evaluated = layer(x + 1)
        results.append((trained, evaluated, layer.running_mean,
                        layer.running_var))
    assert kernel_calls == [(3, 6, 20)] * 2
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


class HookedSN(SN):
    """An overridden BN reduction, as SyncSN's across processes."""

    def _batch_moments(self, mean_in, sqmean_in):
        return mean_in.mean(0), sqmean_in.mean(0)


def test_calls_the_kernel_cannot_serve_fall_back(kernel_calls, monkeypatch):
    """The ``eager`` backend, bf16 input, a batch-moments hook, a member
    that declares no reduction, and no kernels built take the PyTorch
    paths; SyncSN
    alone (no process group) is SN and takes the kernel."""
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    with sf.use_backend('eager'):
        SN(4)(x).sum().backward()  # ATen ops only
    with sf.use_backend('compiled'):
        SyncSN(4)(x).sum().backward()
        assert len(kernel_calls) == 1
        kernel_calls.clear()
        SN(4)(x.bfloat16()).float().sum().backward()
        HookedSN(4)(x).sum().backward()
        layer = SN(4)
        layer._members = (moments.MEMBERS[0],
                          moments.MEMBERS[1]._replace(groups=None),
                          moments.MEMBERS[2])
        layer(x).sum().backward()
        monkeypatch.setattr(native, '_ext', None)
        SN(4)(x).sum().backward()
    assert kernel_calls == []


def test_member_groups_read_the_table():
    table = moments.member_table(('IN', 'LN', 'BN', 'GN'), 2)
    assert native.member_groups(table) == [-1, 1, 0, 2]
    custom = moments.Member('LN', lambda t: t[:, :1], None, False)
    assert native.member_groups((moments.MEMBERS[0], custom)) is None
    # A batch member must declare the batch reduction, and only it.
    wrong = moments.MEMBERS[2]._replace(groups=1)
    assert native.member_groups((wrong, )) is None


def test_non_contiguous_input_and_in_place_relu():
    """channels_last input is copied to rows; the output takes an in-place
    ReLU (not a view) and the gradient matches the reference."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64).to(
        memory_format=torch.channels_last)
    results = []
    for backend in ('compiled', 'autograd'):
        layer = SN(4).double()
        leaf = x.clone().requires_grad_()
        with sf.use_backend(backend):
            out = F.relu(layer(leaf), inplace=True)
        out.sum().backward()
        results.append((out.detach(), leaf.grad))
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)
