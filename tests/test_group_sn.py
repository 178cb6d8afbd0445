"""Group SN and normaliser sets against a reference written from the formulas.

:func:`reference` below is written from the issue's definition, without
:mod:`ssn_norm.ops.moments`: IN mean and unbiased variance per ``(n, c)``
(0 for a single element), ``sqmean = var_in + mean_in²``; the LN, GN and
BN means average ``mean_in`` over the channels, each group of
``C / gn_groups`` channels and the batch, their variances are
``clamp(avg(sqmean) - mean², 0)``; BN in eval takes the running
statistics; channel group ``g`` (channels ``[g·C/G, (g+1)·C/G)``) mixes
with its own softmax (SN) or SparsestMax (SSN) ratios;
``y = (x - mean) / sqrt(var + eps) · γ + β``, statistics in fp32 for bf16
input.  Every layer kind and backend must give its output, running
statistics and gradients (input, γ, β, logits), on every path.
"""
import pytest
import torch
import torch.nn.functional as F
from _helpers import BACKENDS

from ssn_norm import SN, SSN, SyncSN, SyncSSN
from ssn_norm.ops.sparsestmax import is_one_hot, sparsestmax
from ssn_norm.ops.switchable_function import use_backend

C = 8
SHAPES = {'4d': (3, C, 3, 5), '5d': (2, C, 2, 3, 4)}

#: Layer configurations: group SN, normaliser sets, and both together.
CONFIGS = {
    'group2':
    dict(num_groups=2),
    'gn':
    dict(normalizers=('IN', 'LN', 'BN', 'GN'), gn_groups=2),
    'group2-gn4':
    dict(num_groups=2, normalizers=('IN', 'LN', 'BN', 'GN'), gn_groups=4),
    'group4-no-in':
    dict(num_groups=4, normalizers=('GN', 'BN', 'LN'), gn_groups=2),
    'group2-in-ln':
    dict(num_groups=2, normalizers=('LN', 'IN')),
    'bn-only':
    dict(normalizers=('BN', )),
}
#: SSN radius: SparsestMax pushes and the result stays sparse, not
#: one-hot.  Two members: a pushed point of an edge is locally constant
#: (zero logit gradient), so those layers take a radius their ratios
#: already exceed.
RADIUS = {2: 0.02, 3: 0.2, 4: 0.2}


# --------------------------------------------------------------- reference
def ratios_of(logits, kind, radius):
    """(G, K) ratios: each row's softmax (SN) or SparsestMax (SSN)."""
    rows = logits.reshape(-1, logits.shape[-1])
    if kind == 'SN':
        return torch.stack([torch.softmax(row, 0) for row in rows])
    return torch.stack([sparsestmax(row, radius) for row in rows])


def reference(x,
              weight,
              bias,
              mean_logits,
              var_logits,
              normalizers,
              gn_groups=None,
              training=True,
              running=None,
              kind='SN',
              radius=0.0,
              eps=1e-5):
    """SN / SSN of ``x`` from the formulas; also the batch (BN) mean and
    variance (C,) in training."""
    n, c = x.shape[:2]
    dtype = torch.promote_types(x.dtype, torch.float32)
    xs = x.reshape(n, c, -1).to(dtype)
    length = xs.shape[-1]
    mean_in = xs.mean(-1)
    var_in = ((xs - mean_in.unsqueeze(-1))**2).sum(-1) / max(length - 1, 1)
    sq_in = var_in + mean_in**2

    def derived(mean, sq):
        return mean, (sq - mean**2).clamp(min=0)

    stats = {
        'IN': (mean_in, var_in),
        'LN':
        derived(
            mean_in.mean(1, keepdim=True).expand(n, c),
            sq_in.mean(1, keepdim=True).expand(n, c)),
    }
    if gn_groups is not None:
        group = torch.arange(c) // (c // gn_groups)
        gn_mean = torch.stack(
            [mean_in[:, group == g].mean(1) for g in range(gn_groups)], 1)
        gn_sq = torch.stack(
            [sq_in[:, group == g].mean(1) for g in range(gn_groups)], 1)
        stats['GN'] = derived(gn_mean[:, group], gn_sq[:, group])
    batch = derived(mean_in.mean(0), sq_in.mean(0))
    if training:
        stats['BN'] = (batch[0].expand(n, c), batch[1].expand(n, c))
    elif running is not None:
        stats['BN'] = (running[0].to(dtype).expand(n, c),
                       running[1].to(dtype).expand(n, c))
    mean_r = ratios_of(mean_logits, kind, radius).to(dtype)
    var_r = ratios_of(var_logits, kind, radius).to(dtype)
    channel_group = torch.arange(c) // (c // mean_r.shape[0])
    mean = sum(mean_r[channel_group, k] * stats[name][0]
               for k, name in enumerate(normalizers))
    var = sum(var_r[channel_group, k] * stats[name][1]
              for k, name in enumerate(normalizers))
    y = ((xs - mean.unsqueeze(-1)) / torch.sqrt(var.unsqueeze(-1) + eps) *
         weight.to(dtype).unsqueeze(-1) + bias.to(dtype).unsqueeze(-1))
    return y.to(x.dtype).view_as(x), batch


def make_layer(cls, config, dtype=torch.float64, seed=0):
    """A layer with random parameters, running statistics and logits whose
    SparsestMax at :data:`RADIUS` is not one-hot (gradients flow)."""
    gen = torch.Generator().manual_seed(seed)
    layer = cls(C, **config).to(dtype)
    with torch.no_grad():
        for t, (mean,
                std) in ((layer.weight, (1, 0.3)), (layer.bias, (0, 0.3)),
                         (layer.mean_weight, (0, 0.3)), (layer.var_weight,
                                                         (0, 0.3))):
            t.copy_(mean + std * torch.randn(t.shape, generator=gen))
        if layer.using_bn:
            layer.running_mean.copy_(torch.randn(C, generator=gen))
            layer.running_var.uniform_(0.5, 2, generator=gen)
        if hasattr(layer, 'radius'):
            layer.set_radius(RADIUS.get(len(layer.normalizers), 0.0))
    return layer


def random_input(shape, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    view = (1, shape[1]) + (1, ) * (len(shape) - 2)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x = x * torch.linspace(0.5, 2, shape[1], dtype=torch.float64).view(view)
    x = x + torch.linspace(-1, 1, shape[1], dtype=torch.float64).view(view)
    return x.to(dtype)


def expected(layer, x, grad, training):
    """Reference output, batch moments and gradients of (x, γ, β, mean
    logits, variance logits) for ``layer``'s current parameters."""
    leaves = [
        t.detach().clone().requires_grad_()
        for t in (x, layer.weight, layer.bias, layer.mean_weight,
                  layer.var_weight)
    ]
    running = None
    if layer.using_bn:
        running = (layer.running_mean.clone(), layer.running_var.clone())
    kind = 'SSN' if isinstance(layer, SSN) else 'SN'
    radius = float(layer.radius) if kind == 'SSN' else 0.0
    out, batch = reference(*leaves, layer.normalizers, layer.gn_groups,
                           training, running, kind, radius, layer.eps)
    grads = torch.autograd.grad(out, leaves, grad)
    return out.detach(), batch, grads


def actual(layer, x, grad, backend):
    leaves = [x.clone().requires_grad_()]
    params = [layer.weight, layer.bias, layer.mean_weight, layer.var_weight]
    with use_backend(backend):
        out = layer(leaves[0])
        grads = torch.autograd.grad(out, leaves + params, grad)
    return out.detach(), grads


def assert_close(a, e, rtol, atol, what):
    scale = max(e.double().abs().max().item(), 1.0)
    torch.testing.assert_close(
        a.double(),
        e.double(),
        rtol=rtol,
        atol=atol * scale,
        msg=lambda m: f'{what}: {m}')


GRAD_NAMES = ('x', 'weight', 'bias', 'mean_weight', 'var_weight')


def check_training(cls,
                   config,
                   shape,
                   backend,
                   dtype=torch.float64,
                   rtol=1e-9,
                   atol=1e-11,
                   grad_tol=None):
    layer = make_layer(cls, config)
    x, grad = random_input(shape, dtype), random_input(shape, dtype, seed=2)
    if isinstance(layer, SSN) and len(layer.normalizers) > 1:
        # Pins the case: sparse, not one-hot, so nothing freezes.
        assert not any(is_one_hot(r).any() for r in layer.ratios())
    want_out, (mean_bn, var_bn), want_grads = expected(layer, x, grad, True)
    if layer.using_bn:
        want_mean = 0.9 * layer.running_mean + 0.1 * mean_bn
        want_var = 0.9 * layer.running_var + 0.1 * var_bn
    out, grads = actual(layer.train(), x, grad, backend)
    assert out.dtype == dtype and out.shape == x.shape
    assert_close(out, want_out, rtol, atol, 'output')
    grad_rtol, grad_atol = grad_tol or (rtol, atol)
    for name, got, want in zip(GRAD_NAMES, grads, want_grads):
        assert got.shape == want.shape, name
        assert_close(got, want, grad_rtol, grad_atol, f'grad of {name}')
    if layer.using_bn:
        assert_close(layer.running_mean, want_mean, rtol, atol, 'mean')
        assert_close(layer.running_var, want_var, rtol, atol, 'var')
    return grads


def every_case(test):
    """Parametrise ``test`` over each layer class, configuration, input
    rank and path (the reference path must match the formulas too)."""
    for name, values in (('cls', [SN, SSN]), ('config', list(CONFIGS)),
                         ('dims', list(SHAPES)), ('backend', BACKENDS)):
        test = pytest.mark.parametrize(name, values)(test)
    return test


# ------------------------------------------------------------------- tests
@every_case
def test_training_matches_reference(cls, config, dims, backend):
    grads = check_training(cls, CONFIGS[config], SHAPES[dims], backend)
    # The case tests something: the logits get a gradient (one member:
    # its ratio is 1 whatever the logit).
    assert len(CONFIGS[config].get('normalizers', 'KKK')) == 1 or grads[3].abs(
    ).max() > 1e-6 and grads[4].abs().max() > 1e-6


@every_case
def test_eval_matches_reference(cls, config, dims, backend):
    layer = make_layer(cls, CONFIGS[config]).eval()
    shape = SHAPES[dims]
    x, grad = random_input(shape), random_input(shape, seed=2)
    want_out, _, want_grads = expected(layer, x, grad, False)
    with torch.no_grad(), use_backend(backend):
        out = layer(x)
    assert_close(out, want_out, 1e-9, 1e-11, 'no-grad output')
    out, grads = actual(layer, x, grad, backend)
    assert_close(out, want_out, 1e-9, 1e-11, 'output')
    for name, got, want in zip(GRAD_NAMES, grads, want_grads):
        assert_close(got, want, 1e-9, 1e-11, f'grad of {name}')


def _train_fp32_layer(cls, config, dims, backend, dtype):
    """An fp32 layer trained on ``dtype`` input with ``backend``: its
    output and gradients, and the reference's."""
    layer = make_layer(cls, CONFIGS[config], dtype=torch.float32)
    shape = SHAPES[dims]
    x = random_input(shape, dtype)
    grad = random_input(shape, dtype, seed=2)
    want_out, _, want_grads = expected(layer, x, grad, True)
    out, grads = actual(layer.train(), x, grad, backend)
    return out, grads, want_out, want_grads


@every_case
def test_fp32_matches_reference(cls, config, dims, backend):
    """fp32 input and layer against the fp32 reference (the reference in
    fp64 above pins the formulas; this pins the fp32 paths' rounding)."""
    out, grads, want_out, want_grads = _train_fp32_layer(
        cls, config, dims, backend, torch.float32)
    assert out.dtype == torch.float32
    assert_close(out, want_out, 1e-5, 1e-6, 'output')
    for name, got, want in zip(GRAD_NAMES, grads, want_grads):
        assert_close(got, want, 1e-4, 1e-5, f'grad of {name}')


@pytest.mark.parametrize('backend', ['reference', 'auto'])
@pytest.mark.parametrize('dims', list(SHAPES))
@pytest.mark.parametrize('config', ['group2-gn4', 'group4-no-in'])
@pytest.mark.parametrize('cls', [SN, SSN])
def test_bf16_matches_reference(cls, config, dims, backend):
    """bf16 input, fp32 layer: statistics in fp32, the output rounded."""
    out, grads, want_out, want_grads = _train_fp32_layer(
        cls, config, dims, backend, torch.bfloat16)
    assert out.dtype == torch.bfloat16 and grads[0].dtype == torch.bfloat16
    # One bf16 rounding of the output / input gradient (2^-8 relative).
    assert_close(out, want_out, 0, 1e-2, 'output')
    assert_close(grads[0], want_grads[0], 0, 2e-2, 'grad of x')
    for name, got, want in zip(GRAD_NAMES[1:], grads[1:], want_grads[1:]):
        assert got.dtype == torch.float32
        assert_close(got, want, 1e-4, 1e-5, f'grad of {name}')


@pytest.mark.parametrize('config', list(CONFIGS))
@pytest.mark.parametrize('sync_cls, cls', [(SyncSN, SN), (SyncSSN, SSN)])
def test_sync_layers_without_process_group_match_reference(
        sync_cls, cls, config):
    """SyncSN / SyncSSN (no process group: the batch is this process')
    follow the reference too; the two-process form is in
    ``test_dist_sync_norm.py``."""
    check_training(sync_cls, CONFIGS[config], SHAPES['4d'], 'auto')


# ------------------------------------------------- shapes and compatibility
def test_shapes_of_logits_and_buffers():
    assert SN(C).mean_weight.shape == (3, )
    assert SN(C, num_groups=1).var_weight.shape == (3, )
    assert SN(C, num_groups=4).mean_weight.shape == (4, 3)
    assert SN(
        C, normalizers=('IN', 'GN'), gn_groups=2,
        num_groups=2).var_weight.shape == (2, 2)
    assert SSN(C).mean_fixed.shape == (1, )
    ssn = SSN(C, num_groups=4)
    assert ssn.mean_fixed.shape == ssn.var_fixed.shape == (4, )
    assert ssn.frozen.shape == (8, )
    assert SN(C).ratios()[0].shape == (3, )
    assert SSN(C, num_groups=2).ratios()[1].shape == (2, 3)
    assert not hasattr(
        SN(C, normalizers=('IN', 'LN', 'GN'), gn_groups=4), 'running_mean')


def test_default_and_alias_configurations_are_todays_layer():
    """G = 1 with (IN, LN, BN) is the released layer; using_bn=False is
    normalizers=('IN', 'LN'): identical outputs and state dict keys."""
    x = random_input(SHAPES['4d'])
    for explicit, default in [
        (dict(normalizers=('IN', 'LN', 'BN'), num_groups=1), {}),
        (dict(normalizers=('IN', 'LN')), dict(using_bn=False)),
        (dict(normalizers=('IN', 'LN'), using_bn=False), dict(using_bn=False)),
    ]:
        for cls in (SN, SSN):
            a = make_layer(cls, explicit)
            b = make_layer(cls, default)
            assert a.normalizers == b.normalizers
            assert {
                k: v.shape
                for k, v in a.state_dict().items()
            } == {
                k: v.shape
                for k, v in b.state_dict().items()
            }
            for mode in (True, False):
                assert torch.equal(a.train(mode)(x), b.train(mode)(x))
    assert 'normalizers' not in repr(SN(C)) + repr(SN(C, using_bn=False))
    text = repr(SSN(C, num_groups=2, normalizers=('IN', 'GN'), gn_groups=4))
    assert "normalizers=('IN', 'GN')" in text and 'num_groups=2' in text
    assert 'gn_groups=4' in text


@pytest.mark.parametrize('kwargs, message', [
    (dict(normalizers=('IN', 'XN')), "unknown normalizer 'XN'"),
    (dict(normalizers=('IN', 'XN')), "('IN', 'LN', 'BN', 'GN')"),
    (dict(normalizers=('IN', 'LN', 'IN')), "'IN' is repeated"),
    (dict(normalizers=()), 'at least one'),
    (dict(normalizers='IN'), 'tuple of names'),
    (dict(normalizers=('IN', 'GN')), 'gn_groups must be a positive int'),
    (dict(normalizers=('IN', 'GN'), gn_groups=3), 'does not divide'),
    (dict(normalizers=('IN', 'LN'), gn_groups=2), "add 'GN'"),
    (dict(gn_groups=2), "normalizers=(..., 'GN')"),
    (dict(num_groups=3), 'num_groups must be a positive int dividing'),
    (dict(num_groups=0), 'num_groups must be a positive int dividing'),
    (dict(using_bn=False, normalizers=('IN', 'LN', 'BN')), 'contradicts'),
    (dict(using_bn=True, normalizers=('IN', 'LN')), 'contradicts'),
])
@pytest.mark.parametrize('cls', [SN, SSN, SyncSN, SyncSSN])
def test_invalid_configurations_fail_at_build(cls, kwargs, message):
    with pytest.raises(ValueError) as info:
        cls(C, **kwargs)
    assert message in str(info.value)
    assert cls.__name__ in str(info.value)


# ------------------------------------------------------ SSN, per group
def test_ssn_freezes_each_group_on_its_own():
    layer = SSN(C, num_groups=2).double()
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([[4.0, 0, 0], [0.1, 0.2, 0]]))
        layer.var_weight.copy_(torch.tensor([[0.1, 0.0, 0.2], [0, 0, 5.0]]))
    x = random_input(SHAPES['4d']).requires_grad_()
    layer.train()(x).square().sum().backward()
    assert layer.mean_fixed.tolist() == [1, 0]
    assert layer.var_fixed.tolist() == [0, 1]
    assert layer.mean_weight[0].tolist() == [1.0, 0.0, 0.0]
    assert layer.var_weight[1].tolist() == [0.0, 0.0, 1.0]
    assert layer.mean_weight[1].tolist() == pytest.approx([0.1, 0.2, 0])
    assert not layer.mean_weight.grad[0].any()
    assert layer.mean_weight.grad[1].abs().max() > 0
    assert not layer.var_weight.grad[1].any()
    # Unfreezing resets only the frozen rows.
    layer.unfreeze('soften')
    assert not layer.frozen.any()
    assert layer.mean_weight[0].tolist() == [0.5, 0.0, 0.0]
    assert layer.mean_weight[1].tolist() == pytest.approx([0.1, 0.2, 0])


@pytest.mark.parametrize('choices', [((2, 2), (1, 1)), ((0, 2), (1, 1))])
def test_frozen_group_ssn_in_eval(choices):
    """Frozen groups that agree take the single-member path; groups that
    differ mix with their one-hot ratios; both equal the reference."""
    layer = make_layer(SSN, dict(num_groups=2))
    with torch.no_grad():
        layer.mean_weight.copy_(F.one_hot(torch.tensor(choices[0]), 3))
        layer.var_weight.copy_(F.one_hot(torch.tensor(choices[1]), 3))
        layer.mean_fixed.fill_(1)
        layer.var_fixed.fill_(1)
    layer.eval()
    agree = len(set(choices[0])) == 1
    assert layer._selected() == ((choices[0][0], 1) if agree else None)
    x = random_input(SHAPES['5d'])
    want, _, _ = expected(layer, x, torch.ones_like(x), False)
    for backend in BACKENDS:
        with torch.no_grad(), use_backend(backend):
            assert_close(layer(x), want, 1e-9, 1e-11, backend)


def test_ssn_radius_error_names_the_one_hot_radius_of_its_set():
    layer = SSN(
        C, num_groups=2, normalizers=('IN', 'LN', 'BN', 'GN'), gn_groups=2)
    with pytest.raises(ValueError, match='0.8660'):
        layer.set_radius(-1.0)


# ------------------------------------------------------------- deployment
def frozen_group_model(mean_choices, var_choices):
    from torch import nn
    layer = make_layer(
        SSN,
        dict(num_groups=2, normalizers=('IN', 'LN', 'BN', 'GN'), gn_groups=4))
    with torch.no_grad():
        layer.mean_weight.copy_(F.one_hot(torch.tensor(mean_choices), 4))
        layer.var_weight.copy_(F.one_hot(torch.tensor(var_choices), 4))
        layer.mean_fixed.fill_(1)
        layer.var_fixed.fill_(1)
    conv = nn.Conv2d(3, C, 3, padding=1).double()
    return nn.Sequential(conv, layer).eval()


@pytest.mark.parametrize('mean_choices, var_choices, mean, var, kind', [
    ((2, 2), (2, 2), 'BN', 'BN', 'folded'),
    ((3, 3), (1, 1), 'GN', 'LN', 'switched'),
    ((0, 3), (2, 1), 'IN,GN', 'BN,LN', 'switched'),
])
def test_deploy_collapses_frozen_group_ssn(tmp_path, mean_choices, var_choices,
                                           mean, var, kind):
    """Frozen group SSN: one normaliser where the groups agree (BN folds
    into the conv), per-group choices otherwise; exact, saved as data and
    rebuilt."""
    from ssn_norm.deploy import (deploy_switchable_norms, read_deployed,
                                 rebuild_deployed, save_deployed)
    model = frozen_group_model(mean_choices, var_choices)
    x = random_input((2, 3, 5, 6))
    with torch.no_grad():
        want = model(x)
        deployed = deploy_switchable_norms(model, check_input=x)
        got = model(x)
    assert [(d.mean, d.var) for d in deployed] == [(mean, var)]
    assert_close(got, want, 1e-9, 1e-11, 'deployed output')
    path = str(tmp_path / 'deployed.pth')
    save_deployed(model, path, deployed)
    data = read_deployed(path)
    assert data['meta']['deployed'][0]['kind'] == kind
    fresh = frozen_group_model((0, 0), (0, 0))
    rebuild_deployed(fresh, data['meta']['deployed'])
    fresh.load_state_dict(data['state_dict'])
    with torch.no_grad():
        assert_close(fresh.eval()(x), want, 1e-9, 1e-11, 'rebuilt output')


# ----------------------------------------------------------------- ratios
def test_model_ratios_report_each_channel_group_and_gn():
    """Group layers are reported per channel group (``name[g]``) with their
    own normalizers; GN shares appear once a layer mixes GN."""
    from torch import nn

    from ssn_norm.analysis import model_ratios
    from ssn_norm.analysis.ratios import mean_shares
    model = nn.ModuleDict(
        dict(
            a=make_layer(SSN, CONFIGS['group2-gn4']),
            b=make_layer(SN, CONFIGS['group2-in-ln']),
            c=make_layer(SN, {})))
    layers = model_ratios(model)
    assert [lay.name
            for lay in layers] == ['a[0]', 'a[1]', 'b[0]', 'b[1]', 'c']
    for lay, (key, g) in zip(layers[:4], [('a', 0), ('a', 1), ('b', 0),
                                          ('b', 1)]):
        mean, var = model[key].ratios()
        assert lay.normalizers == model[key].normalizers
        assert lay.mean == pytest.approx(mean[g].tolist(), abs=1e-6)
        assert lay.var == pytest.approx(var[g].tolist(), abs=1e-6)
    shares = mean_shares(layers)
    assert {n for _, n in shares} == {'IN', 'LN', 'BN', 'GN'}
    assert sum(v for (s, _), v in shares.items()
               if s == 'mean') == pytest.approx(1)
    assert {n for _, n in mean_shares(layers[-1:])} == {'IN', 'LN', 'BN'}


# ------------------------------------------------- one definition, twice
def test_member_table_is_one_object_per_configuration(monkeypatch):
    from ssn_norm.ops import moments
    table = moments.member_table(('IN', 'GN'), 4)
    assert moments.member_table(['IN', 'GN'], 4) is table
    assert moments.member_table(('IN', 'GN'), 2) is not table
    assert table[1] == moments.Member('GN', batch=False, groups=4)
    assert moments.member_table(('IN', 'LN', 'BN')) == moments.MEMBERS
    # A changed declaration is followed (it is part of the cache key).
    monkeypatch.setitem(moments.DECLARED, 'LN',
                        moments.Member('LN', batch=False, groups=2))
    assert moments.member_table(('LN', ))[0].groups == 2


@pytest.mark.parametrize('backend', BACKENDS[1:])
@pytest.mark.parametrize('cls', [SN, SSN])
def test_double_backward_of_group_layers(cls, backend):
    """create_graph=True replays the reference: exact second derivatives
    for per-group ratios and a GN member too."""
    from torch.func import functional_call
    layer = make_layer(cls, CONFIGS['group2-gn4']).train()
    names = ('weight', 'bias', 'mean_weight', 'var_weight')
    x = random_input((2, C, 3, 4)).requires_grad_()
    params = [
        getattr(layer, n).detach().clone().requires_grad_() for n in names
    ]

    def fn(x, *params):
        return functional_call(layer, dict(zip(names, params)), (x, ))

    with use_backend(backend):
        assert torch.autograd.gradgradcheck(
            fn, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_loading_ungrouped_logits_names_the_converter():
    layer = SSN(C, num_groups=2)
    with pytest.raises(
            RuntimeError, match='tools/convert_checkpoint.py --groups 2'):
        layer.load_state_dict(SSN(C).state_dict())
    with pytest.raises(RuntimeError, match="checkpoint's num_groups"):
        SN(C).load_state_dict(SN(C, num_groups=2).state_dict())


def test_outer_torch_compile_sees_plain_ops():
    """A model compiled from outside traces the reference: same output
    and gradients, and no warning about the member-table lookup."""
    import warnings
    layer = make_layer(SSN, CONFIGS['group2-gn4']).train()
    x = random_input(SHAPES['4d']).requires_grad_()
    grad = random_input(SHAPES['4d'], seed=2)
    want = actual(layer, x, grad, 'auto')
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        compiled = torch.compile(layer, backend='eager')
        got = actual(compiled, x, grad, 'auto')
    torch._dynamo.reset()
    assert not [w for w in caught if 'lru_cache' in str(w.message)]
    assert_close(got[0], want[0], 1e-12, 1e-12, 'output')
    for name, a, e in zip(GRAD_NAMES, got[1], want[1]):
        assert_close(a, e, 1e-10, 1e-12, f'grad of {name}')


def test_ratio_plot_draws_group_layers_and_gn(tmp_path):
    from torch import nn

    from ssn_norm.analysis import model_ratios
    from ssn_norm.analysis.plot import plot_layer_ratios
    model = nn.ModuleDict(
        dict(
            backbone=nn.ModuleDict(
                dict(
                    a=make_layer(SSN, CONFIGS['group2-gn4']),
                    b=make_layer(SN, {})))))
    out = tmp_path / 'ratios.png'
    plot_layer_ratios([('group SN', model_ratios(model))], str(out))
    assert out.stat().st_size > 0
