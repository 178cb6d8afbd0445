"""The kernel providers' passes against the reference formulas, the chooser,
and the 'compiled' provider's warm-up and fallback.

Each provider (:mod:`ssn_norm.ops.providers`) serves the four passes over
the rows of an (N, C, *) input; here each is checked against the formula
written out, in float64 and float32, on short, long and single-element rows
and far from zero; then the choice of provider per device and dtype, and
the 'compiled' provider through Dynamo (its graphs counted) and once
through inductor's real generated code.
"""
import warnings

import pytest
import torch
from _helpers import PROVIDERS_PRESENT, CountingBackend

from ssn_norm import SN, SSN
from ssn_norm.ops import providers
from ssn_norm.ops.providers import PROVIDERS, CompiledProvider, choose_provider
from ssn_norm.ops.switchable_function import use_backend

SHAPES = [(3, 8, 5, 7), (2, 8, 1, 1), (1, 8, 6), (4, 8, 49), (2, 8, 2, 3, 3),
          (2, 3, 9000)]


def provider_named(name, request):
    if name == 'compiled':
        request.getfixturevalue('compiled_provider')
    return PROVIDERS[name]


def formulas(x, grad, scale, centre, coef, const, p, q):
    """The four passes written out, in float64."""
    n, c = x.shape[:2]
    x3 = x.double().reshape(n, c, -1)
    g3 = grad.double().reshape(n, c, -1)
    length = x3.shape[-1]
    mean = x3.mean(-1)
    var = ((x3 - mean.unsqueeze(-1))**2).sum(-1) / max(length - 1, 1)
    affine = x3 * scale.double().unsqueeze(-1) + const.double().unsqueeze(-1)
    dx = (
        g3 * scale.double().unsqueeze(-1) +
        (x3 - centre.double().unsqueeze(-1)) *
        (coef.double() * p).unsqueeze(-1) + (const.double() * q).unsqueeze(-1))
    return (var, mean, affine.view(x.shape), g3.sum(-1), (g3 * x3).sum(-1),
            dx.view(x.shape))


@pytest.mark.parametrize('name', PROVIDERS_PRESENT + ['compiled'])
@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-12),
                                       (torch.float32, 2e-5)])
@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('offset', [0.0, 1000.0])
def test_passes_match_the_formulas(request, name, dtype, tol, shape, offset):
    provider = provider_named(name, request)
    if offset and dtype == torch.float32:
        tol = 1e-3  # the formula's own fp32 rounding far from zero
    gen = torch.Generator().manual_seed(0)
    n, c = shape[:2]
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1 +
         offset).to(dtype)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    scale, centre, coef, const = (
        torch.randn(n, c, generator=gen, dtype=torch.float64).to(dtype)
        for _ in range(4))
    want = formulas(x, grad, scale, centre, coef, const, 0.25, 0.5)
    var, mean = provider.row_moments(x)
    sum_g, sum_gx = provider.grad_sums(grad, x)
    got = (var, mean, provider.affine(x, scale, const), sum_g, sum_gx,
           provider.grad_input(grad, x, scale, centre, coef, const, 0.25, 0.5))
    for i, (a, e) in enumerate(zip(got, want)):
        assert a.dtype == dtype and a.shape == e.shape, i
        size = max(1.0, e.abs().max().item())
        torch.testing.assert_close(
            a.double(), e, rtol=0, atol=tol * size, msg=lambda m: f'{i}: {m}')


@pytest.mark.parametrize('name', PROVIDERS_PRESENT)
def test_factors_broadcast_to_rows(name):
    """A factor broadcastable to (N, C) (a mix without a per-sample,
    per-channel member) serves every row."""
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    scale, shift = torch.randn(
        1, 3, dtype=torch.float64), torch.randn(
            2, 1, dtype=torch.float64)
    torch.testing.assert_close(PROVIDERS[name].affine(x, scale, shift),
                               x * scale.unsqueeze(-1) + shift.unsqueeze(-1))


# ----------------------------------------------------------- the chooser
def test_each_device_tries_its_providers_in_order(no_native):
    x = torch.randn(2, 3, 4)
    found = choose_provider(x)
    assert found.provider.name == 'eager'
    assert 'C++ kernels' in found.passed_over['cpp'][0]
    assert providers.PRIORITY == {
        'cpu': ('cpp', 'eager'),
        'cuda': ('compiled', 'eager')
    }
    with pytest.raises(
            ValueError,
            match="'cpp' kernel provider cannot serve"
            ' this input: C.. kernels'):
        choose_provider(x, 'cpp')
    assert choose_provider(x, 'compiled').provider.name == 'compiled'


def test_cpp_provider_says_what_it_cannot_serve():
    provider = PROVIDERS['cpp']
    reasons = provider.not_supported_reasons(
        torch.zeros(1, 1, 1, dtype=torch.bfloat16, device='meta'))
    assert 'device meta is not the CPU' in reasons
    assert 'dtype torch.bfloat16 is not float32/float64' in reasons


@pytest.mark.skipif(
    'cpp' not in PROVIDERS_PRESENT,
    reason='C++ kernels: '
    f'{providers.UNAVAILABLE_REASON}')
def test_bad_input_to_the_cpp_kernels_is_rejected_with_the_reason():
    from ssn_norm import _ext
    x, rows = torch.randn(2, 4, 5), torch.randn(2, 4)
    with pytest.raises(RuntimeError, match=r'contiguous \(N, C, \*\)'):
        _ext.row_moments(x.transpose(1, 2))
    with pytest.raises(RuntimeError, match='float32 or float64'):
        _ext.row_moments(x.half())
    with pytest.raises(RuntimeError, match='empty input'):
        _ext.row_moments(x[:0])
    with pytest.raises(
            RuntimeError,
            match=r'scale needs one value per row '
            r'\(N \* C = 8\), got 4'):
        _ext.affine_rows(x, rows[0], rows)
    with pytest.raises(RuntimeError, match="grad must have x's shape"):
        _ext.grad_sums(x[:1], x)
    with pytest.raises(RuntimeError, match="of x's dtype"):
        _ext.grad_input(x, x, rows.double(), rows, rows, rows, 1.0, 1.0)


def test_native_kernels_can_be_disabled(monkeypatch):
    monkeypatch.setenv('SSN_NORM_NATIVE', '0')
    ext, reason = providers._load_native()
    assert ext is None and reason == 'disabled by SSN_NORM_NATIVE=0'


@pytest.mark.parametrize('cls', [SN, SSN])
def test_layers_run_without_the_cpp_kernels(no_native, cls):
    """Without a C++ compiler every layer works (the 'eager' provider)."""
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    layer = cls(4).double()
    assert layer.plan(x).provider.name == 'eager'
    out = layer(x)
    with use_backend('reference'):
        want = cls(4).double()(x)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


# ------------------------------------------- the 'compiled' provider
def test_compiled_provider_compiles_only_after_its_warm_up(monkeypatch):
    """Tiered: eager passes (no graph) until the provider has normalised
    ``COMPILE_AFTER_NUMEL`` elements of compilable inputs, then compiled
    code for good; small inputs and 1×1 maps neither count nor compile."""
    counter = CountingBackend()
    provider = CompiledProvider(backend=counter)
    monkeypatch.setitem(PROVIDERS, 'compiled', provider)
    monkeypatch.setattr(providers, 'MIN_COMPILED_NUMEL', 60)
    monkeypatch.setattr(providers, 'COMPILE_AFTER_NUMEL', 2 * 180)
    torch._dynamo.reset()
    x = torch.randn(3, 4, 3, 5, requires_grad=True)  # 180 elements a call
    layer = SN(4)
    try:
        with use_backend('compiled'):
            for _ in range(5):
                layer(torch.randn(1, 4, 2, 2))  # 16 elements: too small
                layer(torch.randn(30, 4, 1, 1))  # 1×1: no rows to pass
            assert provider.seen_numel == 0
            layer(x).sum().backward()
            assert provider.seen_numel == 180 and not provider.warm()
            assert counter.graphs == 0
            layer(x).sum().backward()  # this call ends the warm-up
            assert provider.warm() and counter.graphs > 0
            layer(x).sum().backward()
            assert provider.seen_numel == 360  # no more counting once warm
            provider.restart_warm_up()
            assert not provider.warm()
            provider.end_warm_up()
            assert provider.warm()
    finally:
        torch._dynamo.reset()


def test_compile_counts_from_environment(monkeypatch):
    monkeypatch.delenv('SSN_NORM_MIN_COMPILED_NUMEL', raising=False)
    assert providers._min_numel_from_env() == 1 << 18
    monkeypatch.setenv('SSN_NORM_MIN_COMPILED_NUMEL', ' 4096 ')
    assert providers._min_numel_from_env() == 4096
    for bad in ('0', '-5', '1e5', 'small'):
        monkeypatch.setenv('SSN_NORM_MIN_COMPILED_NUMEL', bad)
        with pytest.raises(ValueError, match='must be a positive integer'):
            providers._min_numel_from_env()
    monkeypatch.delenv('SSN_NORM_COMPILE_AFTER', raising=False)
    assert providers._compile_after_from_env() == 4 * 10**9
    monkeypatch.setenv('SSN_NORM_COMPILE_AFTER', ' 0 ')
    assert providers._compile_after_from_env() == 0
    for bad in ('-1', '4e9', 'later'):
        monkeypatch.setenv('SSN_NORM_COMPILE_AFTER', bad)
        with pytest.raises(
                ValueError,
                match="SSN_NORM_COMPILE_AFTER=.*must be a non-negative"):
            providers._compile_after_from_env()


@pytest.mark.parametrize('cls', [SN, SSN])
def test_compiled_provider_serves_layers_like_the_reference(
        compiled_provider, cls):
    """Through Dynamo: training and eval match the reference, and new batch
    sizes, map sizes and input ranks compile nothing new."""
    layer = cls(8).double()
    reference = cls(8).double()
    sizes = [(2, 8, 5, 7), (1, 8, 6, 6), (4, 8, 3, 5, 7), (3, 8, 9, 4),
             (2, 8, 33), (7, 8, 11, 3), (1, 8, 2, 9, 5), (3, 8, 101)]
    for index, shape in enumerate(sizes):
        if index == 4:
            graphs = compiled_provider.graphs
        x = torch.randn(shape, dtype=torch.float64)
        for training in (True, False):
            leaf, ref_leaf = (x.clone().requires_grad_() for _ in range(2))
            out = layer.train(training)(leaf)
            with use_backend('reference'):
                want = reference.train(training)(ref_leaf)
            grads = torch.autograd.grad(out.square().sum(), leaf)
            want_grads = torch.autograd.grad(want.square().sum(), ref_leaf)
            torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(
                grads[0], want_grads[0], rtol=1e-10, atol=1e-12)
    # Row moments and the input gradient (affine and row sums are
    # BatchNorm kernels); graphs for N > 1 and N = 1, then no more.
    assert 0 < graphs == compiled_provider.graphs


def test_compiled_provider_with_inductor_matches_reference(monkeypatch):
    """Real generated code (fp32; one compile of each pass)."""
    provider = CompiledProvider()
    monkeypatch.setitem(PROVIDERS, 'compiled', provider)
    monkeypatch.setattr(providers, 'MIN_COMPILED_NUMEL', 1)
    monkeypatch.setattr(providers, 'COMPILE_AFTER_NUMEL', 0)
    x = torch.randn(3, 4, 5, 6)
    results = []
    for backend in ('compiled', 'reference'):
        layer = SN(4)
        leaf = x.clone().requires_grad_()
        with use_backend(backend):
            out = layer(leaf)
        results.append((out, *torch.autograd.grad(out.square().sum(), leaf)))
    for a, e in zip(*results):
        torch.testing.assert_close(a, e, rtol=2e-5, atol=2e-6)
    assert set(provider._compiled) == {'row_moments', 'grad_input'}
    assert not provider.failed


def test_compile_failure_falls_back_to_eager_once(monkeypatch):

    def broken_compile(fn, **kwargs):

        def compiled(*args):
            raise RuntimeError('InvalidCxxCompiler: no working C++ compiler')

        return compiled

    monkeypatch.setattr(torch, 'compile', broken_compile)
    provider = CompiledProvider()
    monkeypatch.setitem(PROVIDERS, 'compiled', provider)
    monkeypatch.setattr(providers, 'MIN_COMPILED_NUMEL', 1)
    monkeypatch.setattr(providers, 'COMPILE_AFTER_NUMEL', 0)
    x = torch.randn(3, 4, 3, 5, dtype=torch.float64)
    with use_backend('reference'):
        want = SN(4).double()(x)
    with use_backend('compiled'), pytest.warns(
            RuntimeWarning,
            match='compile of the switchable-norm kernels failed '
            r'\(RuntimeError: InvalidCxxCompiler.*SSN_NORM_BACKEND=eager'):
        out = SN(4).double()(x)
    assert provider.failed
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    with use_backend('compiled'), warnings.catch_warnings():
        warnings.simplefilter('error')
        SN(4).double()(x)


def test_eager_and_cpp_providers_never_call_torch_compile(monkeypatch):

    def forbidden(*args, **kwargs):
        raise AssertionError('torch.compile called')

    monkeypatch.setattr(torch, 'compile', forbidden)
    monkeypatch.setattr(providers, 'MIN_COMPILED_NUMEL', 1)
    monkeypatch.setattr(providers, 'COMPILE_AFTER_NUMEL', 0)
    x = torch.randn(3, 4, 3, 5, requires_grad=True)
    for backend in ['auto'] + PROVIDERS_PRESENT:
        with use_backend(backend):
            SN(4)(x).sum().backward()
            SSN(4).eval()(x)
