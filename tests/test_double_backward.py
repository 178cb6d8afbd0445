"""Double backward (``create_graph=True``) of SN/SSN/SyncSN on every path.

The fast path's hand-written backward and SparsestMax's host form must,
under ``create_graph=True``, give a gradient that is itself exactly
differentiable, as the reference path (plain ops) does.  Checked with
``gradgradcheck`` in float64 on tiny 4-D and 5-D inputs, and with a
WGAN-GP style gradient penalty whose parameter gradients must equal the
reference's.  Second derivatives are finite (zero where SparsestMax is
locally constant) on and next to one-hot rows and its piece borders.
"""
import copy
import functools

import pytest
import torch
from _helpers import BACKENDS, PROVIDERS_PRESENT
from torch import nn
from torch.func import functional_call

from ssn_norm import SN, SSN, SyncSN
from ssn_norm.ops.ratios import sparsestmax_ratios
from ssn_norm.ops.sparsestmax import sparsestmax
from ssn_norm.ops.switchable_function import use_backend

SHAPES = {'4d': (2, 3, 2, 3), '5d': (2, 3, 2, 2, 2)}
PARAMS = ('weight', 'bias', 'mean_weight', 'var_weight')


def make_layer(cls, channels, training):
    torch.manual_seed(0)
    layer = cls(channels).double().train(training)
    with torch.no_grad():
        layer.weight.normal_(1, 0.3)
        layer.bias.normal_(0, 0.3)
        # Small logits: no SSN row is one-hot (frozen) at radius 0.3.
        layer.mean_weight.normal_(0, 0.3)
        layer.var_weight.normal_(0, 0.3)
        layer.running_mean.normal_(0, 1)
        layer.running_var.uniform_(0.5, 2)
    if isinstance(layer, SSN):
        layer.set_radius(0.3)
    return layer


def assert_gradgradcheck(layer, x, backend):
    """gradgradcheck in float64 of ``layer`` as a function of its input and
    parameters (fast_mode: random projections of the Jacobians, as
    strict)."""
    params = [
        getattr(layer, name).detach().clone().requires_grad_()
        for name in PARAMS
    ]

    def fn(x, *params):
        return functional_call(layer, dict(zip(PARAMS, params)), (x, ))

    with use_backend(backend):
        assert torch.autograd.gradgradcheck(
            fn, (x.requires_grad_(), *params),
            eps=1e-6,
            atol=1e-6,
            rtol=1e-5,
            fast_mode=True)


def random_input(shape):
    view = (1, shape[1]) + (1, ) * (len(shape) - 2)
    x = torch.randn(shape, dtype=torch.float64)
    return x * torch.linspace(0.5, 2, shape[1]).double().view(view) + (
        torch.linspace(-1, 1, shape[1]).double().view(view))


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('dims', ['4d', '5d'])
@pytest.mark.parametrize('cls', [SN, SSN, SyncSN])
@pytest.mark.parametrize('backend', BACKENDS)
def test_gradgradcheck(backend, cls, dims, training):
    shape = SHAPES[dims]
    layer = make_layer(cls, shape[1], training)
    assert_gradgradcheck(layer, random_input(shape), backend)
    if isinstance(layer, SSN):
        assert not layer.frozen.any()  # the ratios took part throughout


class Critic(nn.Module):

    def __init__(self, norm, dims):
        super().__init__()
        conv = nn.Conv2d if dims == '4d' else nn.Conv3d
        self.conv1 = conv(2, 3, 1).double()
        self.norm = norm
        self.conv2 = conv(3, 1, 1).double()

    def forward(self, x):
        return self.conv2(self.norm(self.conv1(x)).tanh()).sum()


def penalty_gradients(critic, x, backend):
    """Parameter gradients of a WGAN-GP penalty and the buffers after it."""
    x = x.clone().requires_grad_()
    with use_backend(backend):
        grad_x, = torch.autograd.grad(critic(x), x, create_graph=True)
        penalty = (grad_x.flatten(1).norm(dim=1) - 1).square().mean()
        # conv2.bias does not reach the input gradient.
        grads = torch.autograd.grad(
            penalty, list(critic.parameters()), materialize_grads=True)
    return list(grads), [b.clone() for b in critic.buffers()]


@pytest.mark.parametrize('dims', ['4d', '5d'])
@pytest.mark.parametrize('cls', [SN, SSN, SyncSN])
@pytest.mark.parametrize('backend', PROVIDERS_PRESENT)
def test_gradient_penalty_matches_reference(backend, cls, dims):
    """The gradient of the input gradient reaches the conv weights and the
    norm's parameters, as with plain ops; the running statistics are
    updated once (by the forward, not again by the replay)."""
    shape = (3, 2) + SHAPES[dims][2:]
    x = random_input(shape)
    reference = Critic(make_layer(cls, 3, True), dims)
    critic = copy.deepcopy(reference)
    expected = penalty_gradients(reference, x, 'reference')
    actual = penalty_gradients(critic, x, backend)
    for a, e in zip(actual[0] + actual[1], expected[0] + expected[1]):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)
    # The norm's own second-order terms are there (not silently zero).
    for name, grad in zip(dict(critic.named_parameters()), actual[0]):
        assert name == 'conv2.bias' or grad.abs().sum() > 0, name


@pytest.mark.parametrize('cls', [SN, SSN])
@pytest.mark.parametrize('backend', PROVIDERS_PRESENT)
def test_logit_gradients_are_differentiable(backend, cls):
    """Meta-learning style: the gradient of the ratio logits, taken with
    create_graph=True, differentiated again w.r.t. the input and the
    affine parameters, as on the reference path."""
    x = random_input(SHAPES['4d'])
    v = torch.randn(2, 3, dtype=torch.float64)
    results = []
    for name in (backend, 'reference'):
        layer = make_layer(cls, 3, True)
        inp = x.clone().requires_grad_()
        with use_backend(name):
            loss = (layer(inp) * x.flip(0)).square().sum()
            logits = [layer.mean_weight, layer.var_weight]
            grads = torch.autograd.grad(loss, logits, create_graph=True)
            inner = sum((g * w).sum() for g, w in zip(grads, v))
            results.append(
                torch.autograd.grad(inner, [inp, layer.weight, layer.bias]))
    for actual, expected in zip(*results):
        assert expected.abs().sum() > 0
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)


def test_replay_uses_the_mode_of_the_forward():
    """A layer switched to eval between the forward and a create_graph
    backward still differentiates its training forward (batch statistics)
    and leaves its running statistics as the forward left them."""
    x = random_input(SHAPES['4d'])
    results = []
    for backend in (PROVIDERS_PRESENT[0], 'reference'):
        layer = make_layer(SN, 3, True)
        inp = x.clone().requires_grad_()
        with use_backend(backend):
            out = layer(inp)
            layer.eval()
            grad, = torch.autograd.grad(
                (out * x).square().sum(), inp, create_graph=True)
            second = torch.autograd.grad(grad.square().sum(), layer.weight)
        results.append(second + tuple(layer.buffers()))
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize('choice', [(2, 2), (1, 1), (0, 2)])
@pytest.mark.parametrize('backend', BACKENDS)
def test_gradgradcheck_frozen_ssn_in_eval(backend, choice):
    """A frozen layer in eval with gradients wanted: the reference path,
    with its selection (the frozen path's LN kernel has no backward)."""
    layer = make_layer(SSN, 3, False)
    with torch.no_grad():
        for logits, index in zip((layer.mean_weight, layer.var_weight),
                                 choice):
            logits.copy_(torch.eye(3, dtype=torch.float64)[index])
    layer.mean_fixed.fill_(1)
    layer.var_fixed.fill_(1)
    x = random_input(SHAPES['4d']).requires_grad_()
    affine = [
        t.detach().clone().requires_grad_() for t in (layer.weight, layer.bias)
    ]

    def fn(x, weight, bias):
        return functional_call(layer, dict(weight=weight, bias=bias), (x, ))

    with use_backend(backend):
        assert torch.autograd.gradgradcheck(
            fn, (x, *affine), eps=1e-6, atol=1e-6, rtol=1e-5)
    assert layer._selected() == choice


# ------------------------------------ one-hot rows and piece borders
def one_hot_layer(training):
    """The issue's SSN: variance logits [3, 0, 0] at radius 0.3."""
    layer = make_layer(SSN, 3, training)
    with torch.no_grad():
        layer.var_weight.copy_(torch.tensor([3.0, 0.0, 0.0]))
    return layer


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('backend', BACKENDS)
def test_second_derivatives_at_a_one_hot_row_are_zero(backend, training):
    """The issue's case: variance logits [3, 0, 0] at radius 0.3, a row
    SparsestMax maps to a vertex in a whole neighbourhood: the gradient of
    a mean-logit gradient with respect to the variance logits is zero (was
    NaN on every path)."""
    layer = one_hot_layer(training)
    x = random_input((2, 3, 4, 4))
    with use_backend(backend):
        grad, = torch.autograd.grad(
            layer(x).square().sum(), layer.mean_weight, create_graph=True)
        second, = torch.autograd.grad(grad.sum(), layer.var_weight)
    assert grad.abs().sum() > 0
    assert torch.equal(second, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('backend', BACKENDS)
def test_gradgradcheck_with_a_one_hot_row(backend, training):
    assert_gradgradcheck(
        one_hot_layer(training), random_input((2, 3, 2, 3)), backend)


#: Logits (rows of 3) where SparsestMax is one-hot with a margin, or lies
#: next to a border between its pieces (within 1e-3 of it), at radii 0,
#: 0.3 and 0.6.
NEAR_BORDERS = [
    ([3.0, 0.0, 0.0], 0.3),  # one-hot, locally constant
    ([0.0, 5.0, 0.0], 0.0),
    ([1.0, 0.3, -4.0], 0.75),  # pushed off an edge onto a vertex
    ([1.0, 0.0015, 0.0], 0.0),  # a coordinate about to enter the support
    ([0.9, 0.4, -1.0], 0.3525),  # just inside the push radius
    ([0.3, 0.1, -0.2], 0.4995),  # a push about to leave the simplex
    ([1.0, 1.0 - 1e-3, 0.0], 0.3),  # next to a tie at a face centre
]
#: Exactly on a border: derivatives are one-sided there, so only their
#: finiteness is checked.
ON_BORDERS = [
    ([1.0, 0.0, 0.0], 0.0),  # coordinates at the support's edge
    ([1.0, 1.0, 1.0], 0.3),  # the centre of the simplex
    ([2.0, 2.0, -1.0], 0.3),  # the centre of an edge
    ([1.0, 0.0, 0.0], 0.9),
]


def _forms():
    """SparsestMax as each path computes it: the tensor code, the host
    form, and with the freezing of one-hot rows on top."""

    def host(z, radius, freeze=False):
        return sparsestmax_ratios(
            z,
            torch.tensor(radius, dtype=z.dtype),
            torch.zeros(z.shape[0], dtype=torch.long),
            freeze,
            host=True).ratios

    return {
        'tensor': sparsestmax,
        'host': host,
        'freezing': functools.partial(host, freeze=True)
    }


@pytest.mark.parametrize('form', sorted(_forms()))
@pytest.mark.parametrize('logits, radius', NEAR_BORDERS)
def test_sparsestmax_gradgradcheck_next_to_borders(form, logits, radius):
    fn = _forms()[form]
    z = torch.tensor([logits], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: fn(t, radius), (z, ), eps=1e-7, atol=1e-6)
    assert torch.autograd.gradgradcheck(
        lambda t: fn(t, radius), (z, ), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize('form', sorted(_forms()))
@pytest.mark.parametrize('logits, radius', ON_BORDERS + NEAR_BORDERS)
def test_sparsestmax_derivatives_are_finite_on_borders(form, logits, radius):
    fn = _forms()[form]
    z = torch.tensor([logits], dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    grad, = torch.autograd.grad(
        (fn(z, radius) * weights).square().sum(), z, create_graph=True)
    hessian = torch.stack([
        torch.autograd.grad(grad[0, i], z, retain_graph=True)[0][0]
        for i in range(3)
    ])
    assert torch.isfinite(grad).all() and torch.isfinite(hessian).all()
