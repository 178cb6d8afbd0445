"""ASPP image pool and PSP pool scale 1 normalise 1x1 maps: no NaN.

The real mmseg heads are built with each normaliser; a forward hook proves
the norm of the pooled branch really sees (N, C, 1, 1) input.
"""
import pytest
import torch
from torch import nn

import ssn_norm  # noqa: F401  registers SN/SSN/SyncSN/SyncSSN
from ssn_norm import SSN

IN_CHANNELS, CHANNELS = 16, 8


def _build_head(head_type, norm_cfg):
    """A real mmseg head; call it on a list of feature maps (it takes the
    last, ``in_index=-1``)."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    extra = (
        dict(dilations=(1, 2, 3, 4)) if head_type == 'ASPPHead' else dict(
            pool_scales=(1, 2, 3, 6)))
    head = MODELS.build(
        dict(
            type=head_type,
            in_channels=IN_CHANNELS,
            channels=CHANNELS,
            num_classes=3,
            norm_cfg=norm_cfg,
            **extra))
    head.init_weights()
    return head


def _pooled_norm(head):
    """The norm of the branch that pools to 1x1."""
    branch = (
        head.image_pool
        if hasattr(head, 'image_pool') else head.psp_modules[0])
    assert branch[0].output_size == 1
    conv_module = branch[1]
    return getattr(conv_module, conv_module.norm_name)


NORMS = {
    'SN': dict(type='SN'),
    'SSN': dict(type='SSN'),
    'SyncSN': dict(type='SyncSN'),
    'GN': dict(type='GN', num_groups=4),
    'BN': dict(type='BN'),
}


@pytest.mark.parametrize('head_type', ['ASPPHead', 'PSPHead'])
@pytest.mark.parametrize('norm', list(NORMS))
@pytest.mark.parametrize('batch', [1, 2])
@pytest.mark.parametrize('training', [True, False])
def test_pooled_1x1_branch_is_finite(head_type, norm, batch, training):
    head = _build_head(head_type, NORMS[norm])
    pooled = _pooled_norm(head)
    seen = []
    pooled.register_forward_hook(lambda m, i, o: seen.append(
        (tuple(i[0].shape), bool(torch.isfinite(o).all()))))
    x = torch.randn(batch, IN_CHANNELS, 9, 9, requires_grad=True)
    if not training:
        # Eval after some training steps, as in a real run.
        head.train()
        with torch.no_grad():
            head([torch.randn(2, IN_CHANNELS, 9, 9)])
    head.train(training)
    if norm == 'BN' and training and batch == 1:
        # Why the BN baselines need >= 2 images per GPU: torch refuses.
        with pytest.raises(ValueError, match='more than 1 value per channel'):
            head([x])
        return
    out = head([x])
    assert seen[-1] == ((batch, CHANNELS, 1, 1), True)
    assert out.shape == (batch, 3, 9, 9)
    assert torch.isfinite(out).all()
    if training:
        out.square().mean().backward()
        grads = [p.grad for p in head.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize('head_type', ['ASPPHead', 'PSPHead'])
def test_sn_pooled_branch_carries_information(head_type):
    """SN on a 1x1 map still normalises across channels (LN) and the batch
    (BN): different images give different pooled features."""
    head = _build_head(head_type, dict(type='SN'))
    pooled = _pooled_norm(head)
    outputs = []
    pooled.register_forward_hook(lambda m, i, o: outputs.append(o))
    head.train()
    head([torch.randn(2, IN_CHANNELS, 9, 9)])
    out = outputs[-1]
    assert not torch.allclose(out[0], out[1])


def test_ssn_selecting_in_on_a_1x1_map_outputs_beta():
    """The documented edge: IN of a single element has variance 0 (not NaN),
    so an SSN layer frozen on IN maps a 1x1 input to its bias (up to the
    rounding of x * scale - x * scale, scale = weight / sqrt(eps))."""
    layer = SSN(4)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([1., 0., 0.]))
        layer.var_weight.copy_(torch.tensor([1., 0., 0.]))
        layer.bias.copy_(torch.tensor([0.5, -1., 2., 0.]))
        layer.weight.fill_(3.)
    layer.mean_fixed.fill_(1)
    layer.var_fixed.fill_(1)
    for training in (True, False):
        layer.train(training)
        out = layer(torch.randn(3, 4, 1, 1))
        expected = layer.bias.detach().view(1, 4, 1, 1).expand(3, 4, 1, 1)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-3)


def test_heads_build_the_configured_norm_in_the_pooled_branch():
    for head_type in ('ASPPHead', 'PSPHead'):
        head = _build_head(head_type, dict(type='SSN'))
        assert type(_pooled_norm(head)) is SSN
        head = _build_head(head_type, dict(type='GN', num_groups=4))
        assert type(_pooled_norm(head)) is nn.GroupNorm
