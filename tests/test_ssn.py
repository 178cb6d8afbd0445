"""SSN: SparsestMax ratios, freezing, resume, and the frozen eval path."""
import io
import itertools

import pytest
import torch
import torch.nn.functional as F
from test_switchable_norm import random_input, released_sn

from ssn_norm import NORMALIZERS, SN, SSN, max_radius
from ssn_norm.ops import ONE_HOT_TOL, sparsestmax


def randomised_ssn(num_features, radius=0.0, **kwargs) -> SSN:
    layer = SSN(num_features, **kwargs).double()
    with torch.no_grad():
        layer.weight.normal_(1, 0.3)
        layer.bias.normal_(0, 0.3)
        layer.mean_weight.copy_(torch.tensor([0.4, -0.1, 0.2]))
        layer.var_weight.copy_(torch.tensor([-0.3, 0.3, 0.1]))
        layer.radius.fill_(radius)
    return layer


def one_hot(index: int, num: int = 3) -> torch.Tensor:
    return F.one_hot(torch.tensor(index), num).double()


def freeze(layer: SSN, mean_idx: int, var_idx: int) -> None:
    """Put ``layer`` in the state a finished SSN run leaves it in."""
    with torch.no_grad():
        layer.mean_weight.copy_(one_hot(mean_idx))
        layer.var_weight.copy_(one_hot(var_idx))
        layer.mean_fixed.fill_(1)
        layer.var_fixed.fill_(1)


def test_buffers_as_in_released_checkpoints():
    layer = SSN(4)
    state = layer.state_dict()
    assert set(state) == {
        'weight', 'bias', 'mean_weight', 'var_weight', 'running_mean',
        'running_var', 'mean_fixed', 'var_fixed', 'radius'
    }
    for name in ('mean_fixed', 'var_fixed'):
        assert state[name].dtype == torch.long and state[name].shape == (1, )
    assert state['radius'].dtype == torch.float32
    assert state['radius'].shape == (1, ) and float(state['radius']) == 0
    assert 'radius=0' in repr(layer)


def test_initial_ssn_equals_initial_sn():
    x = torch.randn(3, 4, 5, 5)
    # sparsemax and softmax of equal logits are both uniform.
    torch.testing.assert_close(SSN(4)(x), SN(4)(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize('radius', [0.0, 0.2, 0.45])
def test_output_and_gradients_match_reference(radius):
    layer = randomised_ssn(3, radius)
    x = random_input((3, 3, 4, 5)).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    params = [layer.weight, layer.bias, layer.mean_weight, layer.var_weight]
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    out = layer(x)
    ref = released_sn(x_ref, sparsestmax(ref_params[2], radius),
                      sparsestmax(ref_params[3], radius), ref_params[0],
                      ref_params[1])
    assert not layer.frozen.any()
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-11, rtol=0)
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-11, rtol=0)
    # At r = 0.45 the mean ratios are sparse but not one-hot.
    mean_ratio, _ = layer.ratios()
    torch.testing.assert_close(mean_ratio, sparsestmax(params[2], radius))


def test_freezes_once_one_hot_and_overwrites_logits():
    layer = randomised_ssn(3, radius=1.0)
    layer(random_input((2, 3, 4, 4))).sum().backward()
    assert layer.frozen.tolist() == [True, True]
    assert layer.mean_fixed.device == layer.weight.device
    # Ratios came from sparsestmax; logits now hold that one-hot vector.
    mean_idx = int(sparsestmax(torch.tensor([0.4, -0.1, 0.2]), 1.0).argmax())
    assert torch.equal(layer.mean_weight.detach(), one_hot(mean_idx))
    mean_ratio, var_ratio = layer.ratios()
    assert torch.equal(mean_ratio, one_hot(mean_idx))
    assert var_ratio.max() == 1 and var_ratio.sum() == 1


def test_freezing_uses_a_tolerance():
    # Equal logits pushed just short of the vertex: ~1 - 1e-7, not 1.
    layer = SSN(2)
    layer.radius.fill_(max_radius() - 1e-6)
    soft = sparsestmax(torch.ones(3), float(layer.radius))
    assert 1 - ONE_HOT_TOL < soft.max() < 1
    layer(torch.randn(2, 2, 3, 3)).sum().backward()
    assert layer.frozen.tolist() == [True, True]
    mean_ratio, var_ratio = layer.ratios()
    assert torch.equal(mean_ratio, torch.tensor([1., 0., 0.]))


@pytest.mark.parametrize('radius, training', [(0.5, True), (1.0, False)])
def test_no_freezing_below_radius_or_in_eval(radius, training):
    layer = randomised_ssn(3, radius).train(training)
    layer(random_input((2, 3, 4, 4)))
    assert not layer.frozen.any()


def test_frozen_stays_frozen_under_optimizer_drift():
    layer = randomised_ssn(3, radius=1.0)
    optimizer = torch.optim.SGD(
        layer.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    layer(random_input((2, 3, 4, 4))).square().sum().backward()
    optimizer.step()
    ratios = layer.ratios()
    layer.radius.zero_()
    for _ in range(5):
        optimizer.zero_grad()
        layer(random_input((2, 3, 4, 4))).square().sum().backward()
        optimizer.step()
        assert layer.frozen.all()
        for now, before in zip(layer.ratios(), ratios):
            assert torch.equal(now, before)


def test_frozen_logits_get_zero_gradients_not_none():
    # DDP needs every parameter in the graph; the frozen ones get zeros.
    layer = randomised_ssn(3)
    freeze(layer, 1, 2)
    layer(random_input((2, 3, 4, 4))).square().sum().backward()
    for param in (layer.mean_weight, layer.var_weight):
        assert param.grad is not None
        assert torch.equal(param.grad, torch.zeros(3).double())
    # Only the mean frozen: the variance logits keep learning.
    layer = randomised_ssn(3, radius=0.0)
    with torch.no_grad():
        layer.mean_weight.copy_(one_hot(0))
        layer.mean_fixed.fill_(1)
    layer(random_input((2, 3, 4, 4))).square().sum().backward()
    assert torch.equal(layer.mean_weight.grad, torch.zeros(3).double())
    assert layer.var_weight.grad.abs().sum() > 1e-6
    assert layer.frozen.tolist() == [True, False]


def test_save_load_continue_is_identical():
    source = randomised_ssn(3)
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1)
    for step in range(6):
        source.radius.fill_(step / 5)
        optimizer.zero_grad()
        source(random_input((2, 3, 4, 4))).square().sum().backward()
        optimizer.step()
    assert source.frozen.all()
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)

    target = SSN(3).double().eval()
    x = random_input((2, 3, 4, 4))
    target(x)  # caches "not frozen" for the eval path; loading must reset
    target.load_state_dict(torch.load(buffer))
    assert torch.equal(target.radius, source.radius)
    assert torch.equal(target.frozen, source.frozen)
    source.eval()
    assert torch.equal(target(x), source(x))
    assert target._selected() == source._selected()
    source.train()
    target.train()
    assert torch.equal(target(x), source(x))
    assert torch.equal(target.running_mean, source.running_mean)


@pytest.mark.parametrize('mean_idx, var_idx',
                         list(itertools.product(range(3), range(3))))
def test_frozen_eval_path_equals_general_path(mean_idx, var_idx):
    layer = randomised_ssn(3)
    for _ in range(3):
        layer(random_input((2, 3, 4, 4)))
    freeze(layer, mean_idx, var_idx)
    layer.eval()
    assert layer._selected() == (mean_idx, var_idx)
    x = random_input((2, 3, 4, 4)).requires_grad_()
    out = layer(x)
    running = dict(mean=layer.running_mean, var=layer.running_var)
    ref = released_sn(
        x,
        one_hot(mean_idx),
        one_hot(var_idx),
        layer.weight.detach(),
        layer.bias.detach(),
        training=False,
        running=running)
    torch.testing.assert_close(
        out,
        ref,
        atol=1e-12,
        rtol=0,
        msg=lambda m: f'{NORMALIZERS[mean_idx]}/{NORMALIZERS[var_idx]}: {m}')
    grad, = torch.autograd.grad(out.square().sum(), x)
    ref_grad, = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(grad, ref_grad, atol=1e-11, rtol=0)


def test_using_bn_false_freezes_at_its_own_max_radius():
    layer = SSN(3, using_bn=False)
    assert layer.mean_weight.shape == (2, )
    layer.radius.fill_(max_radius(2) - 1e-3)
    layer(torch.randn(2, 3, 4, 4)).sum().backward()
    assert not layer.frozen.any()
    layer.radius.fill_(max_radius(2))
    layer(torch.randn(2, 3, 4, 4)).sum().backward()
    assert layer.frozen.all()
    layer.eval()
    x = torch.randn(1, 3, 4, 4)
    assert torch.isfinite(layer(x)).all()


# ------------------------------------------------ half-precision modules
def _sgd_steps(layer, x, steps=3, lr=0.5):
    optimizer = torch.optim.SGD(layer.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        layer(x).float().square().mean().backward()
        optimizer.step()


@pytest.mark.parametrize('cls', [SN, SSN])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('start', ['equal', 'random'])
def test_half_module_trains_and_evaluates(cls, dtype, start):
    """A module converted with ``.half()`` / ``.bfloat16()`` (fp16
    deployment, mmdeploy): ratios in fp32 as under autocast, SGD steps from
    equal logits (the default) and from random low-precision logits keep
    every parameter finite, and training and eval give the fp32 module's
    output up to the dtype's rounding."""
    torch.manual_seed(0)
    layer = cls(4)
    if start == 'random':
        with torch.no_grad():
            layer.mean_weight.normal_(0, 1)
            layer.var_weight.normal_(0, 1)
    if cls is SSN:
        layer.set_radius(0.3)
    exact = copy_module(layer)
    layer = layer.to(dtype)
    x = torch.randn(3, 4, 5, 5)
    mean_ratio, _ = layer.ratios()
    assert mean_ratio.dtype == torch.float32
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    for training in (True, False):
        layer.train(training)
        exact.train(training)
        out = layer(x.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), exact(x), rtol=tol, atol=tol)
    layer.train()
    _sgd_steps(layer, x.to(dtype))
    for value in layer.state_dict().values():
        if value.is_floating_point():
            assert torch.isfinite(value).all()
    assert torch.isfinite(layer.eval()(x.to(dtype))).all()
    assert torch.isfinite(layer.train()(x.to(dtype))).all()


def copy_module(layer):
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_half_ssn_from_many_random_logits():
    """About 4-8 % of random fp16 logits raised an index error at radius 0;
    now every one gives ratios on the simplex."""
    layer = SSN(4).half()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 3).half()
    for _ in range(200):
        with torch.no_grad():
            layer.mean_weight.copy_(torch.randn(3, generator=gen))
            layer.var_weight.copy_(torch.randn(3, generator=gen))
        mean_ratio, var_ratio = layer.ratios()
        for ratio in (mean_ratio, var_ratio):
            assert (ratio >= 0).all()
            assert abs(float(ratio.sum()) - 1) < 1e-5
        assert torch.isfinite(layer(x)).all()


# ------------------------------------------- torch.func.functional_call
def test_freezing_leaves_logits_passed_in_through_functional_call():
    """Logits handed in through ``torch.func.functional_call`` are the
    caller's tensors (maybe saved for its own backward): freezing does not
    write them.  The flags (buffers) are set as usual, and a frozen row is
    the one-hot vector of the logits' argmax, the vertex it froze on."""
    from torch.func import functional_call
    layer = randomised_ssn(3, radius=max_radius())
    logits = {
        name: getattr(layer, name).detach().clone().requires_grad_()
        for name in ('mean_weight', 'var_weight')
    }
    before = {name: t.detach().clone() for name, t in logits.items()}
    x = random_input((2, 3, 4, 4))
    out = functional_call(layer, logits, (x, ))
    out.square().sum().backward()
    for name, t in logits.items():
        assert torch.equal(t.detach(), before[name]), name
        assert t._version == 0, name
        assert not t.grad.any(), name  # frozen: constant ratios
    assert layer.frozen.all()
    hot = (before['mean_weight'].argmax(), before['var_weight'].argmax())
    layer.eval()
    assert layer._selected() == (int(layer.mean_weight.argmax()),
                                 int(layer.var_weight.argmax()))
    eval_out = functional_call(layer, logits, (x, ))
    want = functional_call(layer, {
        'mean_weight': one_hot(int(hot[0])),
        'var_weight': one_hot(int(hot[1]))
    }, (x, ))
    torch.testing.assert_close(eval_out, want)
    # The module's own parameters, outside functional_call, are written.
    layer.train()
    with torch.no_grad():
        layer.mean_fixed.zero_()
        layer.var_fixed.zero_()
    layer(x)
    assert layer.mean_weight.tolist() == one_hot(int(hot[0])).tolist()
