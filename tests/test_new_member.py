"""A member normaliser added through its one declaration.

Batch-group normalisation (BGN: statistics over the batch and each of
``gn_groups`` groups of channels) is not one of the library's members.
Declared with one entry of :data:`ssn_norm.ops.moments.DECLARED` (the
worked diff in docs/switchable_norms.md, "Adding a member"), it must train
and evaluate on every path, synchronise, deploy and take batch statistics,
against a reference written here from its definition: nothing else in the
library is told about it.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from _helpers import BACKENDS

from ssn_norm import SN, SSN, SyncSN
from ssn_norm.batch_stats import compute_batch_stats
from ssn_norm.deploy import SwitchedNorm
from ssn_norm.ops import moments
from ssn_norm.ops.sparsestmax import sparsestmax
from ssn_norm.ops.switchable_function import use_backend

NORMALIZERS = ('IN', 'LN', 'BGN')
GROUPS = 2
C = 4


@pytest.fixture
def bgn(monkeypatch):
    """The one line that adds the member."""
    monkeypatch.setitem(
        moments.DECLARED, 'BGN',
        moments.Member('BGN', batch=True, groups=moments.GN_GROUPS))


def reference(x,
              weight,
              bias,
              mean_ratio,
              var_ratio,
              training,
              running,
              eps=1e-5):
    """SN of (IN, LN, BGN) from the definitions, and BN's batch moments."""
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    mean_in = x3.mean(-1)
    var_in = ((x3 - mean_in.unsqueeze(-1))**2).sum(-1) / (x3.shape[-1] - 1)
    sq_in = var_in + mean_in**2
    group = torch.arange(c) // (c // GROUPS)

    def over(t, cols):  # the average over samples ``rows`` and ``cols``
        return t[:, cols].mean()

    mean_ln = mean_in.mean(1, keepdim=True).expand(n, c)
    var_ln = (sq_in.mean(1, keepdim=True) - mean_ln**2).clamp(min=0)
    if training:
        mean_c, sq_c = mean_in.mean(0), sq_in.mean(0)
    else:
        mean_c, sq_c = running[0], running[1] + running[0]**2
    mean_g = torch.stack([mean_c[group == g].mean() for g in range(GROUPS)])
    sq_g = torch.stack([sq_c[group == g].mean() for g in range(GROUPS)])
    mean_bgn = mean_g[group].expand(n, c)
    var_bgn = (sq_g - mean_g**2).clamp(min=0)[group].expand(n, c)
    mean = (
        mean_ratio[0] * mean_in + mean_ratio[1] * mean_ln +
        mean_ratio[2] * mean_bgn)
    var = (
        var_ratio[0] * var_in + var_ratio[1] * var_ln + var_ratio[2] * var_bgn)
    out = ((x3 - mean.unsqueeze(-1)) / torch.sqrt(var.unsqueeze(-1) + eps) *
           weight.view(1, -1, 1) + bias.view(1, -1, 1))
    batch = (mean_in.mean(0), sq_in.mean(0))
    return out.view_as(x), batch


def make_layer(cls):
    """Random parameters and running statistics; SSN at radius 0.2."""
    gen = torch.Generator().manual_seed(0)
    layer = cls(C, normalizers=NORMALIZERS, gn_groups=GROUPS).double()
    spread = dict(weight=(1, 0.3), running_var=(1.25, 0.3))
    for name, t in list(layer.named_parameters()) + list(
            layer.named_buffers()):
        if t.is_floating_point() and name != 'radius':
            mean, std = spread.get(name, (0, 0.3))
            with torch.no_grad():
                t.copy_(mean + std *
                        torch.randn(t.shape, generator=gen, dtype=t.dtype))
    if isinstance(layer, SSN):
        layer.set_radius(0.2)
    return layer


def ratios_of(layer, logits):
    if isinstance(layer, SSN):
        return sparsestmax(logits, float(layer.radius))
    return logits.softmax(-1)


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('cls', [SN, SSN, SyncSN])
@pytest.mark.parametrize('backend', BACKENDS)
def test_declared_member_trains_and_evaluates(bgn, backend, cls, training):
    layer = make_layer(cls).train(training)
    assert [m.name for m in layer.members] == list(NORMALIZERS)
    assert layer.using_bn  # a batch member: running statistics
    running = (layer.running_mean.clone(), layer.running_var.clone())
    x = torch.randn(3, C, 4, 5, dtype=torch.float64) * 2 + 1
    grad = torch.randn_like(x)
    leaves = [
        t.detach().clone().requires_grad_()
        for t in (x, layer.weight, layer.bias, layer.mean_weight,
                  layer.var_weight)
    ]
    want, batch = reference(leaves[0], leaves[1], leaves[2],
                            ratios_of(layer, leaves[3]),
                            ratios_of(layer, leaves[4]), training, running)
    want_grads = torch.autograd.grad(want, leaves, grad)
    inp = x.clone().requires_grad_()
    params = [layer.weight, layer.bias, layer.mean_weight, layer.var_weight]
    with use_backend(backend):
        out = layer(inp)
    grads = torch.autograd.grad(out, [inp] + params, grad)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    for got, expected in zip(grads, want_grads):
        assert expected.abs().max() > 0
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)
    if training:
        mean, sq = batch
        torch.testing.assert_close(layer.running_mean,
                                   0.9 * running[0] + 0.1 * mean)
        torch.testing.assert_close(layer.running_var,
                                   0.9 * running[1] + 0.1 * (sq - mean**2))


def test_declared_member_deploys_and_takes_batch_statistics(bgn):
    """A layer frozen on the new member deploys to a plain module that
    computes it; batch statistics average its batch moments."""
    layer = make_layer(SSN).eval()
    with torch.no_grad():
        for logits in (layer.mean_weight, layer.var_weight):
            logits.copy_(F.one_hot(torch.tensor(2), 3))
        layer.mean_fixed.fill_(1)
        layer.var_fixed.fill_(1)
    x = torch.randn(3, C, 4, 5, dtype=torch.float64)
    running = (layer.running_mean, layer.running_var)
    hot = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    want, _ = reference(x, layer.weight, layer.bias, hot, hot, False, running)
    with torch.no_grad():
        assert layer.plan(x).path == 'frozen'
        torch.testing.assert_close(layer(x), want)
        deployed = SwitchedNorm(layer, 'BGN', 'BGN')
        torch.testing.assert_close(deployed(x), want)
    fresh = copy.deepcopy(layer)
    compute_batch_stats(fresh, [x, x[:1]], 2)
    x3 = torch.cat([x, x[:1]]).reshape(4, C, -1)
    var_in, mean_in = torch.var_mean(x3, -1)
    mean = mean_in.mean(0)
    torch.testing.assert_close(fresh.running_mean, mean)
    torch.testing.assert_close(fresh.running_var,
                               (var_in + mean_in**2).mean(0) - mean**2)


def test_undeclared_member_is_refused():
    with pytest.raises(ValueError, match="unknown normalizer 'BGN'"):
        SN(C, normalizers=NORMALIZERS, gn_groups=GROUPS)
