"""SN against a slow reference written from the released formulas.

The reference is deliberately naive: explicit sums, the released order of
operations (IN moments first, LN/BN derived from them), ratios passed in
already normalised, running statistics updated in the torch momentum
convention.  Everything numeric runs in float64 with tight tolerances.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from ssn_norm import NORMALIZERS, SN, SSN, SyncSN

SHAPES = {
    '3d': (4, 3, 5),
    '4d': (3, 4, 3, 5),
    '5d': (2, 3, 2, 3, 4),
}


def released_sn(x,
                mean_ratio,
                var_ratio,
                weight,
                bias,
                eps=1e-5,
                training=True,
                running=None,
                momentum=0.1,
                using_bn=True):
    """Released SN forward; updates ``running`` (dict) in place if given."""
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    length = x3.shape[-1]
    mean_in = x3.sum(-1, keepdim=True) / length
    var_in = ((x3 - mean_in)**2).sum(-1, keepdim=True) / (length - 1)
    mean_ln = mean_in.mean(1, keepdim=True)
    temp = var_in + mean_in**2
    var_ln = temp.mean(1, keepdim=True) - mean_ln**2
    means, variances = [mean_in, mean_ln], [var_in, var_ln]
    if using_bn:
        if training:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = temp.mean(0, keepdim=True) - mean_bn**2
            if running is not None:
                running['mean'] = ((1 - momentum) * running['mean'] +
                                   momentum * mean_bn.detach().view(c))
                running['var'] = ((1 - momentum) * running['var'] +
                                  momentum * var_bn.detach().view(c))
        else:
            mean_bn = running['mean'].view(1, c, 1)
            var_bn = running['var'].view(1, c, 1)
        means.append(mean_bn)
        variances.append(var_bn)
    mean = sum(r * m for r, m in zip(mean_ratio, means))
    var = sum(r * v for r, v in zip(var_ratio, variances))
    out = (x3 - mean) / torch.sqrt(var + eps)
    out = out * weight.view(1, c, 1) + bias.view(1, c, 1)
    return out.view(x.shape)


def randomised_sn(num_features, **kwargs) -> SN:
    layer = SN(num_features, **kwargs).double()
    with torch.no_grad():
        layer.weight.normal_(1, 0.3)
        layer.bias.normal_(0, 0.3)
        layer.mean_weight.normal_(0, 1)
        layer.var_weight.normal_(0, 1)
    return layer


def random_input(shape):
    # Per-channel offsets and scales so every statistic matters.
    c = shape[1]
    view = (1, c) + (1, ) * (len(shape) - 2)
    return (torch.randn(shape, dtype=torch.float64) *
            torch.linspace(0.5, 2, c, dtype=torch.float64).view(view) +
            torch.linspace(-1, 1, c, dtype=torch.float64).view(view))


def test_defaults_and_initialisation():
    assert NORMALIZERS == ('IN', 'LN', 'BN')
    layer = SN(6)
    assert layer.eps == 1e-5 and layer.momentum == 0.1
    assert layer.using_bn and layer.using_moving_average
    assert not layer.last_gamma
    assert torch.equal(layer.weight, torch.ones(6))
    assert torch.equal(layer.bias, torch.zeros(6))
    assert torch.equal(layer.mean_weight, torch.ones(3))
    assert torch.equal(layer.var_weight, torch.ones(3))
    assert torch.equal(layer.running_mean, torch.zeros(6))
    assert torch.equal(layer.running_var, torch.ones(6))
    assert set(layer.state_dict()) == {
        'weight', 'bias', 'mean_weight', 'var_weight', 'running_mean',
        'running_var'
    }


@pytest.mark.parametrize('dims', sorted(SHAPES))
def test_train_output_and_gradients_match_reference(dims):
    shape = SHAPES[dims]
    layer = randomised_sn(shape[1])
    x = random_input(shape).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    params = [layer.weight, layer.bias, layer.mean_weight, layer.var_weight]
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    grad_out = torch.randn(shape, dtype=torch.float64)

    out = layer(x)
    ref = released_sn(x_ref, F.softmax(ref_params[2], 0),
                      F.softmax(ref_params[3], 0), ref_params[0],
                      ref_params[1])
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    (out * grad_out).sum().backward()
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-11, rtol=0)
    for name, p, q in zip(('weight', 'bias', 'mean_weight', 'var_weight'),
                          params, ref_params):
        torch.testing.assert_close(
            p.grad, q.grad, atol=1e-11, rtol=0, msg=lambda m: f'{name}: {m}')


@pytest.mark.parametrize('dims', sorted(SHAPES))
def test_running_stats_and_eval_match_reference(dims):
    shape = SHAPES[dims]
    layer = randomised_sn(shape[1], momentum=0.3)
    running = dict(
        mean=torch.zeros(shape[1], dtype=torch.float64),
        var=torch.ones(shape[1], dtype=torch.float64))
    mean_ratio = F.softmax(layer.mean_weight.detach(), 0)
    var_ratio = F.softmax(layer.var_weight.detach(), 0)
    weight, bias = layer.weight.detach(), layer.bias.detach()
    for step in range(4):
        x = random_input(shape) * (1 + step)
        layer(x)
        released_sn(
            x,
            mean_ratio,
            var_ratio,
            weight,
            bias,
            running=running,
            momentum=0.3)
    torch.testing.assert_close(
        layer.running_mean, running['mean'], atol=1e-13, rtol=0)
    torch.testing.assert_close(
        layer.running_var, running['var'], atol=1e-13, rtol=0)

    layer.eval()
    x = random_input(shape).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out = layer(x)
    ref = released_sn(
        x_ref,
        mean_ratio,
        var_ratio,
        weight,
        bias,
        training=False,
        running=running)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    out.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-11, rtol=0)
    # Eval leaves the running statistics alone.
    torch.testing.assert_close(
        layer.running_mean, running['mean'], atol=1e-13, rtol=0)


def _one_hot_logits(index: int) -> torch.Tensor:
    # softmax error e^-40 ~ 4e-18: below float64 resolution of the outputs.
    return 40 * F.one_hot(torch.tensor(index), 3).double()


@pytest.mark.parametrize('training', [True, False])
def test_output_is_an_ordinary_autograd_tensor(training):
    """In-place ops after the norm (ConvModule's ReLU(inplace=True)) and a
    second backward through a retained graph work as for any layer."""
    layer = randomised_sn(3).train(training)
    x = random_input((2, 3, 4, 4)).requires_grad_()
    out = layer(x)
    grad, = torch.autograd.grad(out.square().sum(), x, retain_graph=True)
    again, = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(again, grad, atol=0, rtol=0)
    relu = F.relu(layer(x))
    out = layer(x)
    F.relu_(out)
    torch.testing.assert_close(out, relu, atol=0, rtol=0)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize('dims', sorted(SHAPES))
def test_one_hot_logits_reproduce_in_ln_bn(dims):
    shape = SHAPES[dims]
    eps = 1e-5
    x = random_input(shape)
    n, c = shape[:2]
    x3 = x.reshape(n, c, -1)
    length = x3.shape[-1]
    # Plain IN, with the released unbiased variance: rescaled instance_norm.
    pure_in = (
        F.instance_norm(x3, eps=eps * (length - 1) / length) * math.sqrt(
            (length - 1) / length))
    # LN / BN: biased variance plus the released derivation's extra term
    # mean(var_in_unbiased - var_in_biased) = mean(var_in_biased) / (L - 1).
    var_b = x3.var(-1, unbiased=False)
    var_ln = (x3.var(
        (1, 2), unbiased=False) + var_b.mean(1) / (length - 1)).view(n, 1, 1)
    pure_ln = (x3 - x3.mean((1, 2), keepdim=True)) / (var_ln + eps).sqrt()
    var_bn = (x3.var(
        (0, 2), unbiased=False) + var_b.mean(0) / (length - 1)).view(1, c, 1)
    pure_bn = (x3 - x3.mean((0, 2), keepdim=True)) / (var_bn + eps).sqrt()
    for index, expected in enumerate((pure_in, pure_ln, pure_bn)):
        layer = SN(c).double()
        with torch.no_grad():
            layer.mean_weight.copy_(_one_hot_logits(index))
            layer.var_weight.copy_(_one_hot_logits(index))
        torch.testing.assert_close(
            layer(x).reshape(n, c, -1),
            expected,
            atol=1e-12,
            rtol=0,
            msg=lambda m: f'{NORMALIZERS[index]}: {m}')


def test_one_hot_bn_in_eval_is_an_affine_map_of_running_stats():
    layer = SN(3).double()
    with torch.no_grad():
        layer.mean_weight.copy_(_one_hot_logits(2))
        layer.var_weight.copy_(_one_hot_logits(2))
        layer.running_mean.copy_(torch.tensor([0.5, -1., 2.]))
        layer.running_var.copy_(torch.tensor([4., 0.25, 1.]))
    layer.eval()
    x = random_input((2, 3, 4, 4))
    expected = F.batch_norm(
        x,
        layer.running_mean,
        layer.running_var,
        training=False,
        eps=layer.eps)
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize('dims', sorted(SHAPES))
def test_using_bn_false(dims):
    shape = SHAPES[dims]
    layer = randomised_sn(shape[1], using_bn=False)
    assert layer.mean_weight.shape == (2, )
    assert set(
        layer.state_dict()) == {'weight', 'bias', 'mean_weight', 'var_weight'}
    x = random_input(shape).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out = layer(x)
    ref = released_sn(
        x_ref,
        F.softmax(layer.mean_weight.detach(), 0),
        F.softmax(layer.var_weight.detach(), 0),
        layer.weight.detach(),
        layer.bias.detach(),
        using_bn=False)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    out.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-11, rtol=0)
    # No batch statistics: each sample is normalised on its own, in train
    # and in eval alike.
    torch.testing.assert_close(layer(x[:1]), out[:1], atol=1e-12, rtol=0)
    layer.eval()
    torch.testing.assert_close(layer(x), out, atol=1e-12, rtol=0)


@pytest.mark.parametrize('kwargs', [
    dict(using_moving_average=False),
    dict(momentum=None),
])
def test_cumulative_average_of_batch_moments(kwargs):
    layer = SN(3, **kwargs).double()
    assert 'num_batches_tracked' in layer.state_dict()
    means, sqmeans = [], []
    for step in range(5):
        x = random_input((2 + step, 3, 4, 3)) * (1 + step) + step
        layer(x)
        x3 = x.reshape(x.shape[0], 3, -1)
        mean_in = x3.mean(-1)
        sqmean_in = x3.var(-1) + mean_in**2  # released: unbiased IN var
        means.append(mean_in.mean(0))
        sqmeans.append(sqmean_in.mean(0))
    mean = torch.stack(means).mean(0)
    var = torch.stack(sqmeans).mean(0) - mean**2
    assert int(layer.num_batches_tracked) == 5
    torch.testing.assert_close(layer.running_mean, mean, atol=1e-12, rtol=0)
    torch.testing.assert_close(layer.running_var, var, atol=1e-12, rtol=0)
    layer.reset_running_stats()
    assert int(layer.num_batches_tracked) == 0
    assert torch.equal(layer.running_mean, torch.zeros(3).double())
    assert torch.equal(layer.running_var, torch.ones(3).double())


def test_last_gamma_starts_as_zero_map():
    layer = SN(4, last_gamma=True)
    assert torch.equal(layer.weight, torch.zeros(4))
    with torch.no_grad():
        layer.bias.copy_(torch.arange(4.))
    out = layer(torch.randn(2, 4, 3, 3))
    assert torch.equal(out,
                       torch.arange(4.).view(1, 4, 1, 1).expand(2, 4, 3, 3))
    layer.reset_parameters()
    assert torch.equal(layer.weight, torch.zeros(4))
    assert torch.equal(layer.bias, torch.zeros(4))


def test_extra_repr_lists_every_option():
    text = repr(
        SN(8,
           eps=1e-3,
           momentum=0.05,
           using_bn=False,
           using_moving_average=False,
           last_gamma=True))
    for part in ('8', 'eps=0.001', 'momentum=0.05', 'using_bn=False',
                 'using_moving_average=False', 'last_gamma=True'):
        assert part in text


@pytest.mark.parametrize('shape, match', [
    ((4, 3), r'expects input of shape \(N, C, \*\).*got shape \(4, 3\)'),
    ((4, ), r'expects input of shape \(N, C, \*\).*got shape \(4,\)'),
    ((2, 5, 3, 3), r'built for 3 channels but got input with 5 channels'),
])
def test_bad_input_is_named(shape, match):
    with pytest.raises(ValueError, match=match):
        SN(3)(torch.randn(shape))


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_features=0), r'num_features must be a positive int, got 0'),
    (dict(num_features=3.0), r'num_features must be a positive int, got 3.0'),
    (dict(num_features=3, eps=0.), r'eps must be > 0, got 0.0'),
    (dict(num_features=3,
          momentum=1.5), r'momentum must be in \[0, 1\].*got 1.5'),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SN(**kwargs)


# ------------------------------------------------ where the formulas break
def _layer(cls, num_features=4, **kwargs):
    layer = cls(num_features, **kwargs)
    if cls is SSN:
        layer.radius.fill_(0.3)  # sparse but not one-hot ratios
    return layer


@pytest.mark.parametrize('cls', [SN, SSN])
@pytest.mark.parametrize('shape', [(2, 4, 1, 1), (1, 4, 3, 3), (1, 4, 1, 1),
                                   (2, 4, 1), (1, 4, 1, 1, 1)])
def test_finite_on_single_elements_and_single_samples(cls, shape):
    layer = _layer(cls)
    x = torch.randn(shape, requires_grad=True)
    for _ in range(2):
        out = layer(x)
        out.square().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    for param in layer.parameters():
        assert torch.isfinite(param.grad).all()
    assert torch.isfinite(layer.running_mean).all()
    assert torch.isfinite(layer.running_var).all()
    layer.eval()
    assert torch.isfinite(layer(x)).all()


@pytest.mark.parametrize('cls', [SN, SSN, SyncSN])
@pytest.mark.parametrize('shape', [(0, 4, 5, 5), (2, 4, 0, 5), (0, 4, 3)])
@pytest.mark.parametrize('training', [True, False])
def test_empty_input_gives_empty_output(cls, shape, training):
    # mmdet can hand a head an empty RoI batch: an empty output, running
    # statistics untouched, every parameter in the graph with zero gradient.
    layer = _layer(cls).train(training)
    stats = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(shape, requires_grad=True)
    out = layer(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    out.sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and not param.grad.any(), name
    for key, value in layer.state_dict().items():
        torch.testing.assert_close(value, stats[key], rtol=0, atol=0)


def test_single_element_in_variance_is_zero():
    # Pure IN on a 1x1 map: x - mean_in = 0, so the output is beta.
    layer = SN(4).double()
    with torch.no_grad():
        layer.mean_weight.copy_(_one_hot_logits(0))
        layer.var_weight.copy_(_one_hot_logits(0))
        layer.bias.copy_(torch.arange(4.))
    out = layer(random_input((3, 4, 1, 1)))
    torch.testing.assert_close(
        out,
        torch.arange(4.).double().view(1, 4, 1, 1).expand(3, 4, 1, 1))


def test_batch_of_one_uses_its_own_statistics_for_bn():
    # N = 1: the BN moments are that sample's IN moments.
    layer = SN(3).double()
    with torch.no_grad():
        layer.mean_weight.copy_(_one_hot_logits(2))
        layer.var_weight.copy_(_one_hot_logits(2))
    in_layer = SN(3).double()
    with torch.no_grad():
        in_layer.mean_weight.copy_(_one_hot_logits(0))
        in_layer.var_weight.copy_(_one_hot_logits(0))
    x = random_input((1, 3, 4, 4))
    torch.testing.assert_close(layer(x), in_layer(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize('cls', [SN, SSN])
def test_equal_logits_are_finite(cls):
    layer = _layer(cls)
    with torch.no_grad():
        layer.mean_weight.fill_(0.7)
        layer.var_weight.fill_(0.7)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    layer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(layer.mean_weight.grad).all()


@pytest.mark.parametrize('cls', [SN, SSN])
@pytest.mark.parametrize('dtype, atol', [(torch.float16, 4e-3),
                                         (torch.bfloat16, 3e-2)])
def test_low_precision_input(cls, dtype, atol):
    reference = _layer(cls)
    layer = _layer(cls)
    x = torch.randn(2, 4, 5, 5) * 30 + 100  # large mean: fp16 sums overflow
    expected = reference(x)
    out = layer(x.to(dtype))
    assert out.dtype == dtype
    assert layer.running_mean.dtype == torch.float32
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=atol)
    torch.testing.assert_close(
        layer.running_mean, reference.running_mean, atol=0.05, rtol=1e-3)
    torch.testing.assert_close(
        layer.running_var, reference.running_var, rtol=1e-2, atol=0)
    layer.eval()
    reference.eval()
    torch.testing.assert_close(
        layer(x.to(dtype)).float(), reference(x), atol=atol, rtol=atol)
    # A layer converted with .half()/.bfloat16() works as well.
    converted = _layer(cls).to(dtype)
    out = converted(x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    # Under autocast a conv hands the norm its low-precision output.
    conv = torch.nn.Conv2d(3, 4, 3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = _layer(cls)(conv(torch.randn(2, 3, 6, 6)))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_layers_and_ops_import_without_openmmlab():
    """``ssn_norm.layers`` and ``ssn_norm.ops`` are pure PyTorch: they import
    with mmcv and mmengine made unimportable, and load neither."""
    import subprocess
    import sys
    code = '\n'.join([
        'import sys',
        "for name in ('mmcv', 'mmengine', 'mmdet', 'mmseg', 'mmaction'):",
        '    sys.modules[name] = None  # any import of them raises',
        'import ssn_norm.layers, ssn_norm.ops',
        'from ssn_norm.ops import collectives, moments, providers, ratios',
        'from ssn_norm.ops import sparsestmax, sparsestmax_host',
        'from ssn_norm.ops import switchable_function',
        'import torch',
        'ssn_norm.layers.SN(4).train()(torch.randn(2, 4, 3, 3))',
        "loaded = sorted(m for m, v in sys.modules.items() if v is not None",
        "                and m.split('.')[0] in ('mmcv', 'mmengine'))",
        'assert not loaded, loaded',
        "print('ok')",
    ])
    done = subprocess.run([sys.executable, '-c', code],
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == 'ok', done.stderr
