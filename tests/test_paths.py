"""The fast and frozen paths of SN/SSN against the reference path.

The reference path (plain differentiable ops, as the released layer) is
what every other path must reproduce: outputs, input and parameter
gradients, running statistics; float64 with tight tolerances, float32,
fp16/bf16 input, 3-D/4-D/5-D, training and eval, SN and SSN (also frozen
one-hot), 1×1 maps, a batch of one.  The paths run on each kernel provider
present (``BACKENDS``; the 'compiled' provider is tests/test_providers.py's).
No timings are asserted.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from _helpers import BACKENDS, PROVIDERS_PRESENT, CountingBackend

from ssn_norm import SN, SSN
from ssn_norm.ops import moments, switchable_function
from ssn_norm.ops.switchable_function import (choose_path, switchable_norm,
                                              use_backend)

SHAPES = {
    '3d': (4, 3, 5),
    '4d': (3, 4, 3, 5),
    '5d': (2, 3, 2, 3, 4),
    'n1': (1, 4, 3, 5),
    '1x1': (3, 4, 1, 1),
}


def randomised(cls, channels, dtype=torch.float64, frozen=None, **kwargs):
    layer = cls(channels, **kwargs).to(dtype)
    with torch.no_grad():
        layer.weight.normal_(1, 0.3)
        layer.bias.normal_(0, 0.3)
        layer.mean_weight.normal_(0, 1)
        layer.var_weight.normal_(0, 1)
        if layer.using_bn:
            layer.running_mean.normal_(0, 1)
            layer.running_var.uniform_(0.5, 2)
        if frozen is not None:
            for logits, index in zip((layer.mean_weight, layer.var_weight),
                                     frozen):
                logits.copy_(F.one_hot(torch.tensor(index), 3))
            layer.mean_fixed.fill_(1)
            layer.var_fixed.fill_(1)
    return layer


def random_input(shape, dtype=torch.float64):
    # Per-channel offsets and scales so that every statistic matters.
    c = shape[1]
    view = (1, c) + (1, ) * (len(shape) - 2)
    x = torch.randn(shape, dtype=torch.float64)
    x = x * torch.linspace(0.5, 2, c, dtype=torch.float64).view(view)
    x = x + torch.linspace(-1, 1, c, dtype=torch.float64).view(view)
    return x.to(dtype)


def run(layer, x, grad, backend, training):
    """Output, gradients of input and parameters, running statistics."""
    layer = layer.train(training)
    x = x.clone().requires_grad_()
    params = [p for p in layer.parameters()]
    with use_backend(backend):
        out = layer(x)
        grads = torch.autograd.grad(out, [x] + params, grad, allow_unused=True)
    buffers = [b.clone() for b in layer.buffers()]
    return [out.detach()] + list(grads) + buffers


def run_no_grad(layer, x, backend, training):
    with use_backend(backend), torch.no_grad():
        out = layer.train(training)(x)
    return [out] + [b.clone() for b in layer.buffers()]


def assert_all_close(actual, expected, rtol, atol=0.0):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        if e is None or a is None:
            assert a is None and e is None, f'item {i}: one is None'
            continue
        assert a.dtype == e.dtype and a.shape == e.shape, f'item {i}'
        scale = e.double().abs().max().item()
        torch.testing.assert_close(
            a.double(),
            e.double(),
            rtol=rtol,
            atol=atol * max(scale, 1.0),
            msg=lambda m, i=i: f'item {i}: {m}')


def compare(cls,
            shape,
            training,
            backend,
            frozen=None,
            dtype=torch.float64,
            rtol=1e-10,
            atol=1e-12,
            **kwargs):
    """``backend``'s run (with gradients; and without, which is the fast
    path in eval too) against the reference's."""
    torch.manual_seed(0)
    x, grad = random_input(shape, dtype), random_input(shape, dtype)
    layers = [randomised(cls, shape[1], dtype, frozen, **kwargs)]
    for _ in range(3):
        layers.append(copy.deepcopy(layers[0]))
    expected = run(layers[0], x, grad, 'reference', training)
    actual = run(layers[1], x, grad, backend, training)
    assert_all_close(actual, expected, rtol, atol)
    expected = run_no_grad(layers[2], x, 'reference', training)
    assert_all_close(
        run_no_grad(layers[3], x, backend, training), expected, rtol, atol)
    return actual


# ------------------------------------------------------ the one chooser
def test_backend_names_and_environment(monkeypatch):
    sf = switchable_function
    assert sf.get_backend() in sf.BACKENDS == ('auto', 'reference', 'cpp',
                                               'compiled', 'eager')
    with use_backend('eager'):
        assert sf.get_backend() == 'eager'
        with pytest.raises(ValueError, match="backend 'triton'.*choose one"):
            sf.set_backend('triton')
        assert sf.get_backend() == 'eager'
    monkeypatch.setenv('SSN_NORM_BACKEND', ' Eager ')
    assert sf._backend_from_env() == 'eager'
    monkeypatch.setenv('SSN_NORM_BACKEND', 'fast')
    with pytest.raises(ValueError, match=r"SSN_NORM_BACKEND='fast' is not"):
        sf._backend_from_env()
    monkeypatch.delenv('SSN_NORM_BACKEND')
    assert sf._backend_from_env() == 'auto'


def test_one_decision_per_call_says_why():
    """``choose_path`` decides path and provider once; ``layer.plan(x)``
    prints it, with the providers passed over and why."""
    layer = SN(4)
    x = torch.randn(2, 4, 3, 3)
    first = PROVIDERS_PRESENT[0]
    assert str(
        layer.plan(x)) == (f"fast path (training), kernel provider '{first}'")
    plan = layer.plan(x.bfloat16())
    assert plan.path == 'fast' and plan.provider.name == 'eager'
    if 'cpp' in PROVIDERS_PRESENT:
        assert "not 'cpp': dtype torch.bfloat16 is not float32/float64" in (
            str(plan))
    layer.eval()
    assert layer.plan(x).path == 'reference'  # eval with gradients
    with torch.no_grad():
        assert layer.plan(x).path == 'fast'
        assert layer.plan(x[:0]).path == 'reference'  # empty input
        ssn = randomised(SSN, 4, torch.float32, frozen=(0, 2)).eval()
        assert str(
            ssn.plan(x)).startswith('frozen path (eval of a frozen selection)')
        with use_backend('reference'):
            assert layer.plan(x).path == 'reference'
        with use_backend('eager'):
            assert layer.plan(x).provider.name == 'eager'
        if 'cpp' in PROVIDERS_PRESENT:
            with use_backend('cpp'), pytest.raises(
                    ValueError,
                    match="'cpp' kernel provider cannot serve "
                    'this input: dtype torch.float16'):
                layer(x.half())


def test_outer_tracers_take_the_reference_path():
    """torch.compile of a model with SN traces the reference ops (one graph,
    no break at an opaque Function); SSN compiles too, in training and in
    eval, with the radius check and the selection cache out of the way.
    (torch.jit is refused: tests/test_misuse_errors.py.)"""
    counter = CountingBackend()
    layer = randomised(SN, 4, torch.float32)
    x = random_input((2, 4, 5, 5), torch.float32).requires_grad_()
    out = torch.compile(layer, backend=counter)(x)
    out.square().sum().backward()
    assert counter.graphs == 1
    torch.testing.assert_close(out, layer(x))
    for training in (True, False):
        ssn = randomised(SSN, 4, torch.float32).train(training)
        ssn.set_radius(0.3)
        reference = copy.deepcopy(ssn)
        out = torch.compile(ssn, backend=CountingBackend())(x)
        torch.testing.assert_close(out, reference(x))
        torch.testing.assert_close(ssn.state_dict(), reference.state_dict())
    torch._dynamo.reset()


# ---------------------------------------------- fast and frozen paths, fp64
@pytest.mark.parametrize('backend', PROVIDERS_PRESENT)
@pytest.mark.parametrize('cls', [SN, SSN])
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('dims', sorted(SHAPES))
def test_fast_path_matches_reference_fp64(backend, cls, training, dims):
    compare(cls, SHAPES[dims], training, backend)


@pytest.mark.parametrize('backend', PROVIDERS_PRESENT)
@pytest.mark.parametrize('frozen', [(0, 0), (1, 1), (2, 2), (0, 2), (2, 1)])
@pytest.mark.parametrize('dims', ['4d', '5d', 'n1', '1x1'])
def test_frozen_path_matches_reference(backend, frozen, dims):
    compare(SSN, SHAPES[dims], False, backend, frozen=frozen)


@pytest.mark.parametrize('backend', BACKENDS)
def test_frozen_mixed_choice_is_in_mean_with_running_variance(backend):
    """Mean from IN, variance from BN: (1, C) scale with (N, C) shift."""
    shape = SHAPES['4d']
    x = random_input(shape)
    layer = randomised(SSN, shape[1], frozen=(0, 2)).eval()
    n, c = shape[:2]
    mean_in = x.reshape(n, c, -1).mean(-1).view(n, c, 1, 1)
    var = layer.running_var.view(1, c, 1, 1)
    expected = ((x - mean_in) / torch.sqrt(var + layer.eps) *
                layer.weight.view(1, c, 1, 1) + layer.bias.view(1, c, 1, 1))
    with use_backend(backend), torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('backend', PROVIDERS_PRESENT)
@pytest.mark.parametrize('cls', [SN, SSN])
@pytest.mark.parametrize('training', [True, False])
def test_fast_path_matches_reference_fp32(backend, cls, training):
    compare(
        cls, (4, 6, 7, 9),
        training,
        backend,
        dtype=torch.float32,
        rtol=2e-5,
        atol=2e-6)


@pytest.mark.parametrize('kwargs', [
    dict(using_bn=False),
    dict(momentum=None),
    dict(using_moving_average=False),
    dict(last_gamma=True),
])
@pytest.mark.parametrize('backend', PROVIDERS_PRESENT)
def test_fast_path_matches_reference_for_options(backend, kwargs):
    compare(SN, SHAPES['4d'], True, backend, **kwargs)
    compare(SSN, SHAPES['n1'], True, backend, **kwargs)


@pytest.mark.parametrize('backend', BACKENDS)
def test_degenerate_rows_stay_finite_and_exact(backend):
    """1×1 maps and constant channels: IN variance 0, IN output = bias."""
    one_by_one = random_input((2, 3, 1, 1))
    constant = torch.full((2, 3, 4, 4), 2.5, dtype=torch.float64)
    for x in (one_by_one, constant):
        layer = randomised(SSN, 3, frozen=(0, 0)).eval()
        out = run(layer, x, torch.ones_like(x), backend, False)
        assert all(torch.isfinite(t).all() for t in out if t is not None)
        torch.testing.assert_close(
            out[0],
            layer.bias.detach().view(1, 3, 1, 1).expand_as(x))
        # The output does not depend on x: a zero input gradient.
        torch.testing.assert_close(
            out[1], torch.zeros_like(x), rtol=0, atol=1e-6)


# ----------------------------------------------------- low precision input
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('training', [True, False])
def test_low_precision_input_is_as_accurate_as_reference(dtype, training):
    """fp16/bf16 input, fp32 layer (the 'eager' provider serves it): at
    least as close to the fp32 result as the reference on the same
    low-precision input."""
    shape = (3, 4, 5, 6)
    x, grad = random_input(shape, dtype), random_input(shape, dtype)
    layer = randomised(SN, 4, torch.float32)
    assert layer.plan(x).provider.name == 'eager'
    state = layer.state_dict()
    exact = run(layer, x.float(), grad.float(), 'reference', training)
    layer.load_state_dict(state)
    reference = run(layer, x, grad, 'reference', training)
    layer.load_state_dict(state)
    actual = run(layer, x, grad, 'auto', training)
    assert actual[0].dtype == actual[1].dtype == dtype
    for i, (a, r, e) in enumerate(zip(actual, reference, exact)):
        if e is None:
            continue
        error = (a.double() - e.double()).abs().max()
        ref_error = (r.double() - e.double()).abs().max()
        tiny = 1e-6 * e.double().abs().max()
        assert error <= 2 * ref_error + tiny, f'item {i}: {error}, {ref_error}'


@pytest.mark.parametrize('choice', [(2, 2), (1, 1), (0, 2)])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_frozen_path_follows_the_dtype_rule(dtype, choice):
    """Low-precision input to a frozen fp32 layer: statistics and factors
    in fp32 (BN frozen included: one native BatchNorm pass), the output in
    the input's dtype, as close to the fp32 result as the reference."""
    x = random_input((2, 4, 5, 6), dtype)
    layer = randomised(SSN, 4, torch.float32, frozen=choice).eval()
    with torch.no_grad():
        exact = layer(x.float())
        outs = [
            run_no_grad(layer, x, b, False)[0] for b in ('reference', 'auto')
        ]
    assert outs[1].dtype == dtype
    error, ref_error = ((o.float() - exact).abs().max() for o in outs)
    assert error <= 2 * ref_error + 1e-6


# --------------------------------------------------- autograd integration
@pytest.mark.parametrize('backend', PROVIDERS_PRESENT)
def test_function_behaves_like_autograd_ops(backend):
    layer = randomised(SN, 4)
    x = random_input((2, 4, 3, 3)).requires_grad_()
    with use_backend(backend):
        out = layer(x)
        first, = torch.autograd.grad(out.square().sum(), x, retain_graph=True)
        second, = torch.autograd.grad(out.square().sum(), x)
        torch.testing.assert_close(second, first, rtol=0, atol=0)
        out = layer(x)
        F.relu_(out)  # in-place on the output, as ConvModule does
        out.sum().backward()
        assert torch.isfinite(x.grad).all()
        # Twice differentiable (tests/test_double_backward.py checks the
        # values).
        grad, = torch.autograd.grad(
            layer(x).square().sum(), x, create_graph=True)
        assert grad.requires_grad


@pytest.mark.parametrize('backend', PROVIDERS_PRESENT)
def test_non_contiguous_and_channels_last_input(backend):
    layer = randomised(SN, 4)
    base = random_input((3, 4, 6, 10))
    for x in (base.to(memory_format=torch.channels_last), base[..., ::2]):
        assert not x.is_contiguous()
        expected = run(copy.deepcopy(layer), x, x, 'reference', True)
        actual = run(copy.deepcopy(layer), x, x, backend, True)
        assert_all_close(actual, expected, 1e-10, 1e-12)


@pytest.mark.parametrize('backend', PROVIDERS_PRESENT)
def test_only_the_input_is_saved_at_full_size(backend):
    """Activation memory as BatchNorm's: one full-size tensor (the input,
    shared with it) is kept for the backward."""
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with use_backend(backend), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        SN(8).train()(x)
    full = {
        t.untyped_storage().data_ptr()
        for t in saved if t.numel() == x.numel()
    }
    assert full == {x.untyped_storage().data_ptr()}


def test_frozen_bn_choice_in_eval_is_one_native_batch_norm(monkeypatch):
    calls = []
    original = F.batch_norm

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, 'batch_norm', spy)
    layer = randomised(SSN, 4, torch.float32, frozen=(2, 2)).eval()
    x = random_input((2, 4, 5, 5), torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(
            layer(x),
            original(x, layer.running_mean, layer.running_var, layer.weight,
                     layer.bias, False, 0.0, layer.eps))
    assert calls == [x.shape]


@pytest.mark.parametrize('backend', BACKENDS)
def test_batch_moments_come_back_as_values(backend):
    """A training forward returns its batch moments (detached, (C,), with
    the sample count); the layer updates its running statistics from them,
    or hands them to ``moment_recorder``."""
    x = random_input(SHAPES['4d'])
    layer = randomised(SN, 4)
    spec = layer._moment_spec(None)
    ratios = moments.channel_ratios(layer._ratios(), 4)
    with use_backend(backend):
        out, batch = switchable_norm(x, layer.weight, layer.bias, ratios, spec)
    x3 = x.reshape(3, 4, -1)
    # Second moment from the unbiased IN variance, as the released code.
    var_in, mean_in = torch.var_mean(x3, -1)
    want = (x3.mean((0, 2)), (var_in + mean_in.square()).mean(0))
    for got, expected in zip(batch[:2], want):
        assert got.shape == (4, ) and not got.requires_grad
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(batch.var, want[1] - want[0].square())
    assert float(batch.count) == 3
    recorded = []
    layer.moment_recorder = lambda mod, mean, sqmean: recorded.append(
        (mean, sqmean))
    before = layer.running_mean.clone()
    with use_backend(backend):
        layer.train()(x)
    assert torch.equal(layer.running_mean, before)
    for got, expected in zip(recorded[0], batch[:2]):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('cls', [SN, SSN])
def test_fast_path_does_not_call_the_reference(monkeypatch, cls):
    """In training the fast path computes and differentiates the mix by
    hand: the reference is not called (it is on the reference path), and a
    second backward gives the same gradients."""
    calls = []
    generic = switchable_function.normalize_reference

    def spy(*args, **kwargs):
        calls.append(1)
        return generic(*args, **kwargs)

    monkeypatch.setattr(switchable_function, 'normalize_reference', spy)
    layer = randomised(cls, 4).train()
    x = random_input(SHAPES['4d']).requires_grad_()
    grad = random_input(SHAPES['4d'])
    for backend, expected_calls in [(b, 0) for b in PROVIDERS_PRESENT
                                    ] + [('reference', 1)]:
        calls.clear()
        with use_backend(backend):
            out = layer(x)
        assert len(calls) == expected_calls, backend
    out = layer(x)
    first = torch.autograd.grad(
        out, [x, layer.mean_weight], grad, retain_graph=True)
    second = torch.autograd.grad(out, [x, layer.mean_weight], grad)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_choose_path_sees_each_gradient_source():
    """A gradient wanted by any one tensor decides it (eval: reference)."""
    x = torch.randn(2, 3, 4)
    w = torch.ones(3)
    assert choose_path(x, (w, ), False, None).path == 'fast'
    assert choose_path(x, (w.requires_grad_(), ), False,
                       None).path == 'reference'
    assert choose_path(x.requires_grad_(), (), False, None).path == 'reference'
