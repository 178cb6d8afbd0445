"""The fast paths of SN/SSN against the plain-autograd reference.

Every backend of :mod:`ssn_norm.ops.backend` must give the
outputs, the input and parameter gradients and the running statistics of
the ``autograd`` backend (plain differentiable ops, as the released layer):
float64 with tight tolerances, float32, fp16/bf16 input, 3-D/4-D/5-D,
training and eval, SN and SSN (also frozen one-hot), 1×1 maps, a batch of
one.  ``compiled`` runs real inductor code in fp32 and, for the remaining
cases, Dynamo with its eager backend (same graphs and guards, no C++
compilation) to keep this file fast.  No timings are asserted.
"""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from _helpers import CountingBackend

from ssn_norm import SN, SSN
from ssn_norm.ops import backend as sf
from ssn_norm.ops import switchable_function
from ssn_norm.ops.switchable_function import batch_norm_inference

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


def run(layer, x, grad, backend, training, create_graph=False):
    """Output, gradients of input and parameters, running statistics."""
    layer = layer.train(training)
    x = x.clone().requires_grad_()
    params = [p for p in layer.parameters()]
    with sf.use_backend(backend):
        out = layer(x)
        grads = torch.autograd.grad(out, [x] + params, grad, allow_unused=True)
    buffers = [b.clone() for b in layer.buffers()]
    return [out.detach()] + list(grads) + buffers


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
    torch.manual_seed(0)
    x, grad = random_input(shape, dtype), random_input(shape, dtype)
    reference = randomised(cls, shape[1], dtype, frozen, **kwargs)
    layer = randomised(cls, shape[1], dtype, frozen, **kwargs)
    layer.load_state_dict(reference.state_dict())
    expected = run(reference, x, grad, 'autograd', training)
    actual = run(layer, x, grad, backend, training)
    assert_all_close(actual, expected, rtol, atol)
    return actual


# ----------------------------------------------------- backend selection
def test_backend_selection_and_errors(monkeypatch):
    assert sf.get_backend() in sf.BACKENDS
    with sf.use_backend('eager'):
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
    assert sf._backend_from_env() == 'compiled'


def test_min_compiled_numel_from_environment(monkeypatch):
    monkeypatch.delenv('SSN_NORM_MIN_COMPILED_NUMEL', raising=False)
    assert sf._min_numel_from_env() == 1 << 18
    monkeypatch.setenv('SSN_NORM_MIN_COMPILED_NUMEL', ' 4096 ')
    assert sf._min_numel_from_env() == 4096
    for bad in ('0', '-5', '1e5', 'small'):
        monkeypatch.setenv('SSN_NORM_MIN_COMPILED_NUMEL', bad)
        with pytest.raises(ValueError, match='must be a positive integer'):
            sf._min_numel_from_env()


def test_compile_after_from_environment(monkeypatch):
    monkeypatch.delenv('SSN_NORM_COMPILE_AFTER', raising=False)
    assert sf._compile_after_from_env() == 4 * 10**9
    monkeypatch.setenv('SSN_NORM_COMPILE_AFTER', ' 0 ')
    assert sf._compile_after_from_env() == 0
    for bad in ('-1', '4e9', 'later'):
        monkeypatch.setenv('SSN_NORM_COMPILE_AFTER', bad)
        with pytest.raises(
                ValueError,
                match="SSN_NORM_COMPILE_AFTER=.*must be a non-negative"):
            sf._compile_after_from_env()


def test_compiled_backend_compiles_only_after_its_warm_up(monkeypatch, no_native):
    """Tiered: eager kernels (no graph) until the layers have normalised
    ``COMPILE_AFTER_NUMEL`` elements of compilable inputs, then compiled
    code for good; small inputs neither count nor compile."""
    counter = CountingBackend()
    monkeypatch.setattr(sf, 'MIN_COMPILED_NUMEL', 60)
    monkeypatch.setattr(sf, '_COMPILED', sf._CompiledKernels(backend=counter))
    shape = (3, 4, 3, 5)  # 180 elements per call
    monkeypatch.setattr(sf, 'COMPILE_AFTER_NUMEL', 2 * 180)
    torch._dynamo.reset()
    try:
        reference = compare(SN, shape, True, 'eager')
        for _ in range(5):
            # 4×2×2×2 = 32 elements: below MIN_COMPILED_NUMEL, not counted.
            compare(SN, (4, 2, 2, 2), True, 'compiled')
        assert sf._COMPILED.seen_numel == 0
        warming = compare(SN, shape, True, 'compiled')
        assert sf._COMPILED.seen_numel == 180 and not sf._COMPILED.warm()
        assert counter.graphs == 0
        assert_all_close(warming, reference, 1e-12)
        compare(SN, shape, True, 'compiled')  # this call ends the warm-up
        assert sf._COMPILED.warm() and counter.graphs > 0
        compare(SN, shape, True, 'compiled')
        assert sf._COMPILED.seen_numel == 360  # no more counting once warm
    finally:
        torch._dynamo.reset()


# --------------------------------------- eager kernels, float64 and float32
@pytest.mark.parametrize('cls', [SN, SSN])
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('dims', sorted(SHAPES))
def test_eager_backend_matches_reference_fp64(cls, training, dims):
    compare(cls, SHAPES[dims], training, 'eager')


@pytest.mark.parametrize('frozen', [(0, 0), (1, 1), (2, 2), (0, 2), (2, 1)])
@pytest.mark.parametrize('dims', ['4d', '5d', 'n1', '1x1'])
def test_frozen_ssn_in_eval_matches_reference(frozen, dims):
    compare(SSN, SHAPES[dims], False, 'eager', frozen=frozen)


def test_frozen_mixed_choice_is_in_mean_with_running_variance():
    """Mean from IN, variance from BN: (1, C) scale with (N, C) shift."""
    shape = SHAPES['4d']
    x = random_input(shape)
    layer = randomised(SSN, shape[1], frozen=(0, 2)).eval()
    n, c = shape[:2]
    mean_in = x.reshape(n, c, -1).mean(-1).view(n, c, 1, 1)
    var = layer.running_var.view(1, c, 1, 1)
    expected = ((x - mean_in) / torch.sqrt(var + layer.eps) *
                layer.weight.view(1, c, 1, 1) + layer.bias.view(1, c, 1, 1))
    for backend in sf.BACKENDS:
        with sf.use_backend(backend), torch.no_grad():
            torch.testing.assert_close(
                layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('cls', [SN, SSN])
@pytest.mark.parametrize('training', [True, False])
def test_eager_backend_matches_reference_fp32(cls, training):
    compare(
        cls, (4, 6, 7, 9),
        training,
        'eager',
        dtype=torch.float32,
        rtol=2e-5,
        atol=2e-6)


@pytest.mark.parametrize('kwargs', [
    dict(using_bn=False),
    dict(momentum=None),
    dict(using_moving_average=False),
    dict(last_gamma=True),
])
@pytest.mark.parametrize('backend', ['eager', 'compiled'])
def test_fast_backends_match_reference_for_options(dynamo_kernels, backend,
                                                   kwargs):
    compare(SN, SHAPES['4d'], True, backend, **kwargs)
    compare(SSN, SHAPES['n1'], True, backend, **kwargs)


def test_degenerate_rows_stay_finite_and_exact():
    """1×1 maps and constant channels: IN variance 0, IN output = bias."""
    one_by_one = random_input((2, 3, 1, 1))
    constant = torch.full((2, 3, 4, 4), 2.5, dtype=torch.float64)
    for x in (one_by_one, constant):
        layer = randomised(SSN, 3, frozen=(0, 0)).eval()
        for backend in sf.BACKENDS:
            out = run(layer, x, torch.ones_like(x), backend, False)
            assert all(torch.isfinite(t).all() for t in out if t is not None)
            torch.testing.assert_close(
                out[0],
                layer.bias.detach().view(1, 3, 1, 1).expand_as(x))
            # The output does not depend on x: a zero input gradient.
            torch.testing.assert_close(
                out[1], torch.zeros_like(x), rtol=0, atol=1e-6)


# ----------------------------------------------------- low precision input
@pytest.mark.parametrize('backend', ['eager', 'compiled'])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('training', [True, False])
def test_low_precision_input_is_as_accurate_as_reference(
        dynamo_kernels, backend, dtype, training):
    """fp16/bf16 input, fp32 layer: each backend is at least as close to the
    fp32 result as the autograd backend on the same low-precision input."""
    shape = (3, 4, 5, 6)
    x, grad = random_input(shape, dtype), random_input(shape, dtype)
    layer = randomised(SN, 4, torch.float32)
    state = layer.state_dict()
    exact = run(layer, x.float(), grad.float(), 'autograd', training)
    layer.load_state_dict(state)
    reference = run(layer, x, grad, 'autograd', training)
    layer.load_state_dict(state)
    actual = run(layer, x, grad, backend, training)
    assert actual[0].dtype == actual[1].dtype == dtype
    for i, (a, r, e) in enumerate(zip(actual, reference, exact)):
        if e is None:
            continue
        error = (a.double() - e.double()).abs().max()
        ref_error = (r.double() - e.double()).abs().max()
        tiny = 1e-6 * e.double().abs().max()
        assert error <= 2 * ref_error + tiny, f'item {i}: {error}, {ref_error}'


# --------------------------------------------------------- compiled paths
@pytest.mark.parametrize('cls', [SN, SSN])
@pytest.mark.parametrize('training', [True, False])
def test_compiled_backend_matches_reference_through_dynamo(
        dynamo_kernels, cls, training):
    for dims in sorted(SHAPES):
        compare(cls, SHAPES[dims], training, 'compiled')
    for frozen in [(0, 0), (1, 1), (0, 2)]:
        compare(SSN, SHAPES['5d'], False, 'compiled', frozen=frozen)


def test_compiled_kernels_do_not_recompile_for_new_sizes(dynamo_kernels):
    """One graph per kernel for every batch size, image size and input
    rank; the whole-layer training graphs take one more for N = 1 (the
    mix broadcasts over the batch); a new dtype compiles again."""
    layer = SN(8)
    sizes = [(2, 8, 5, 7), (3, 8, 9, 4), (1, 8, 6, 6), (4, 8, 3, 5, 7),
             (2, 8, 33), (5, 8, 2, 2)]
    with sf.use_backend('compiled'):
        for shape in sizes:
            x = torch.randn(shape, requires_grad=True)
            layer.train()(x).sum().backward()
            layer.eval()(x).sum().backward()
            with torch.no_grad():
                layer(x)
        # Eval without gradients: var_mean (eval with gradients runs the
        # reference).  Training: training_forward and training_backward,
        # for N > 1 and for N = 1.
        assert dynamo_kernels.graphs == 5
        more_sizes = [(7, 8, 11, 3), (1, 8, 2, 9, 5), (3, 8, 101)]
        for shape in more_sizes:
            x = torch.randn(shape, requires_grad=True)
            layer.train()(x).sum().backward()
            layer.eval()(x).sum().backward()
        assert dynamo_kernels.graphs == 5
        with torch.no_grad():
            layer.double()(torch.randn(2, 8, 4, 4, dtype=torch.float64))
    # A new dtype (eval without gradients): var_mean again.
    assert dynamo_kernels.graphs == 6
    assert not sf._COMPILED.failed


def test_compiled_ssn_ratios_match_eager(dynamo_kernels):
    """SSN's ratios and freezing as one compiled graph (forward and
    backward) equal the eager ones: values, stored logits and flags,
    gradients; any radius, frozen rows, near-vertex and equal logits."""
    torch.manual_seed(0)
    cases = [(torch.randn(2, 3, dtype=torch.float64) * scale, radius)
             for scale in (0.2, 4.0) for radius in (0.0, 0.3, 0.7, 1.0)]
    cases.append((torch.zeros(2, 3, dtype=torch.float64), 0.5))
    cases.append((torch.tensor([[9.0, 0.0, 0.0], [0.1, 0.2, 0.15]],
                               dtype=torch.float64), 0.2))
    for i, (logits, radius) in enumerate(cases):
        radius = torch.tensor([radius], dtype=torch.float64)
        fixed = (torch.tensor([i % 2]), torch.tensor([(i // 2) % 2]))
        grad = torch.randn(2, 3, dtype=torch.float64)
        for freeze in (True, False):
            results = []
            for fn in (sf.ratios_with_freezing_tensor, sf.fast_ssn_ratios):
                leaf = logits.clone().requires_grad_()
                ratios, stored, flags = fn(leaf, radius, *fixed, freeze)
                dlogits, = torch.autograd.grad(ratios, leaf, grad)
                results.append((ratios.detach(), stored, flags, dlogits))
            for actual, expected in zip(results[1], results[0]):
                torch.testing.assert_close(
                    actual, expected, rtol=1e-12, atol=1e-12)
    assert dynamo_kernels.graphs == 2  # freeze or not; shapes are static


def test_compiled_backend_with_inductor_matches_reference(monkeypatch, no_native):
    """Real generated code (fp32; the graphs are shared by all cases)."""
    monkeypatch.setattr(sf, 'MIN_COMPILED_NUMEL', 1)
    monkeypatch.setattr(sf, 'COMPILE_AFTER_NUMEL', 0)
    monkeypatch.setattr(sf, '_COMPILED', sf._CompiledKernels())
    for cls, dims, training in [(SN, '4d', True), (SSN, '5d', True),
                                (SN, 'n1', True), (SN, '3d', False)]:
        compare(
            cls,
            SHAPES[dims],
            training,
            'compiled',
            dtype=torch.float32,
            rtol=2e-5,
            atol=2e-6)
    assert sf._COMPILED._compiled is not None and not sf._COMPILED.failed
    ratios = sf._COMPILED_SSN_RATIOS
    assert ratios._compiled is not None and not ratios.failed


def test_compile_failure_falls_back_to_eager_once(monkeypatch, no_native):

    def broken_compile(fn, **kwargs):

        def compiled(*args):
            raise RuntimeError('InvalidCxxCompiler: no working C++ compiler')

        return compiled

    monkeypatch.setattr(torch, 'compile', broken_compile)
    monkeypatch.setattr(sf, 'MIN_COMPILED_NUMEL', 1)
    monkeypatch.setattr(sf, 'COMPILE_AFTER_NUMEL', 0)
    monkeypatch.setattr(sf, '_COMPILED', sf._CompiledKernels())
    with pytest.warns(
            RuntimeWarning,
            match='compile of the switchable-norm kernels failed '
            r'\(RuntimeError: InvalidCxxCompiler.*'
            'SSN_NORM_BACKEND=eager'):
        actual = compare(SN, SHAPES['4d'], True, 'compiled')
    assert sf._COMPILED.failed
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        again = compare(SN, SHAPES['4d'], True, 'compiled')
    # The first call ran the whole-layer formulas eagerly, this one the
    # eager Function: the same values up to rounding.
    assert_all_close(again, actual, 1e-12)


def test_eager_backend_never_calls_torch_compile(monkeypatch):

    def forbidden(*args, **kwargs):
        raise AssertionError('torch.compile called with the eager backend')

    monkeypatch.setattr(torch, 'compile', forbidden)
    monkeypatch.setattr(sf, 'MIN_COMPILED_NUMEL', 1)
    monkeypatch.setattr(sf, 'COMPILE_AFTER_NUMEL', 0)
    monkeypatch.setattr(sf, '_COMPILED', sf._CompiledKernels())
    compare(SN, SHAPES['4d'], True, 'eager')
    compare(SSN, SHAPES['5d'], False, 'eager')


# --------------------------------------------------- autograd integration
@pytest.mark.parametrize('backend', ['eager', 'compiled'])
def test_function_backends_behave_like_autograd_ops(dynamo_kernels, backend):
    layer = randomised(SN, 4)
    x = random_input((2, 4, 3, 3)).requires_grad_()
    with sf.use_backend(backend):
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


def test_outer_tracers_see_plain_ops():
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


@pytest.mark.parametrize('backend', ['eager', 'compiled'])
def test_non_contiguous_and_channels_last_input(dynamo_kernels, backend):
    layer = randomised(SN, 4)
    base = random_input((3, 4, 6, 10))
    for x in (base.to(memory_format=torch.channels_last), base[..., ::2]):
        assert not x.is_contiguous()
        expected = run(copy.deepcopy(layer), x, x, 'autograd', True)
        actual = run(copy.deepcopy(layer), x, x, backend, True)
        assert_all_close(actual, expected, 1e-10, 1e-12)


def test_only_the_input_is_saved_at_full_size():
    """Activation memory as BatchNorm's: one full-size tensor (the input,
    shared with it) is kept for the backward."""
    shape = (4, 8, 6, 6)
    x = torch.randn(shape, requires_grad=True)
    for backend, expected in [('eager', 1), ('compiled', 1)]:
        saved = []

        def pack(t):
            saved.append(t)
            return t

        with sf.use_backend(backend), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            SN(8).train()(x)
        full = {
            t.untyped_storage().data_ptr()
            for t in saved if t.numel() == x.numel()
        }
        assert len(full) == expected, backend


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


@pytest.mark.parametrize('x_dtype,param_dtype', [
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.float32),
    (torch.float64, torch.float32),
    (torch.float32, torch.float64),
])
def test_batch_norm_inference_dtypes(x_dtype, param_dtype):
    x = random_input((2, 3, 4, 5), x_dtype)
    mean, var, weight, bias = (
        torch.rand(3, dtype=param_dtype) + 0.5 for _ in range(4))
    out = batch_norm_inference(x, mean, var, weight, bias, 1e-5)
    view = (1, 3, 1, 1)
    expected = ((x.double() - mean.double().view(view)) /
                torch.sqrt(var.double().view(view) + 1e-5) *
                weight.double().view(view) + bias.double().view(view))
    assert out.dtype == x_dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(x_dtype, 1e-6)
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


def test_sync_hook_point_and_moment_recorder_are_used():
    """SyncSN overrides ``_batch_moments``; batch_stats sets
    ``moment_recorder``:
    both are reached through the fast path and differentiated through."""

    class ScaledBatchMoments(SN):

        def _batch_moments(self, mean_in, sqmean_in):
            mean, sqmean = super()._batch_moments(mean_in, sqmean_in)
            return mean * 1.5, sqmean * 2.5

    compare(ScaledBatchMoments, SHAPES['4d'], True, 'eager')
    recorded = []
    layer = randomised(SN, 4)
    layer.moment_recorder = lambda mod, mean, sqmean: recorded.append(
        (mean, sqmean))
    x = random_input(SHAPES['4d'])
    with sf.use_backend('eager'):
        layer.train()(x)
    x3 = x.reshape(3, 4, -1)
    torch.testing.assert_close(recorded[0][0], x3.mean((0, 2)))
    # Second moment from the unbiased IN variance, as the released code.
    var_in, mean_in = torch.var_mean(x3, -1)
    torch.testing.assert_close(recorded[0][1],
                               (var_in + mean_in.square()).mean(0))


@pytest.mark.parametrize('cls', [SN, SSN])
def test_training_mix_is_fused_on_fast_backends(monkeypatch, cls):
    """In training the O(N·C) mix is computed and differentiated by hand:
    the reference is not called (it is on the reference backend), and a
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
    for backend, expected_calls in (('eager', 0), ('autograd', 1)):
        calls.clear()
        with sf.use_backend(backend):
            out = layer(x)
        assert len(calls) == expected_calls, backend
    with sf.use_backend('eager'):
        out = layer(x)
    first = torch.autograd.grad(
        out, [x, layer.mean_weight], grad, retain_graph=True)
    second = torch.autograd.grad(out, [x, layer.mean_weight], grad)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
