"""Switchable norms are norm layers for ``paramwise_cfg``.

mmengine's own treatment of a ``BatchNorm2d`` is the reference: with
:class:`~ssn_norm.optim.SwitchableOptimWrapperConstructor`, the affine
parameters of every SN-family layer get the learning rate and weight decay
that mmengine gives a BN layer's under the same ``paramwise_cfg``.
"""
import pytest
from mmengine.optim import build_optim_wrapper
from torch import nn

import ssn_norm  # noqa: F401  registers the constructor
from ssn_norm import SN, SSN, SyncSN, SyncSSN

BASE = dict(lr=0.1, weight_decay=1e-4)


class Pair(nn.Module):
    """A BN and a switchable norm side by side, under the same names."""

    def __init__(self, norm):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.sn = norm(4)


def groups(model, **paramwise):
    wrapper = build_optim_wrapper(
        model,
        dict(
            optimizer=dict(type='SGD', momentum=0.9, **BASE),
            constructor='SwitchableOptimWrapperConstructor',
            paramwise_cfg=paramwise))
    found = {}
    for group in wrapper.optimizer.param_groups:
        for param in group['params']:
            name = next(n for n, p in model.named_parameters() if p is param)
            found[name] = (group['lr'], group['weight_decay'])
    return found


@pytest.mark.parametrize('norm', [SN, SSN, SyncSN, SyncSSN])
@pytest.mark.parametrize(
    'paramwise', [
        dict(norm_decay_mult=0.),
        dict(norm_decay_mult=0.5, bias_lr_mult=2., bias_decay_mult=0.),
        dict(bias_lr_mult=2., bias_decay_mult=3.),
        dict(flat_decay_mult=0.),
        dict(norm_decay_mult=0., custom_keys={'sn.bias': dict(lr_mult=3.)}),
    ],
    ids=['norm0', 'norm-bias', 'bias-only', 'flat', 'custom'])
def test_affine_parameters_are_treated_as_bns(norm, paramwise):
    found = groups(Pair(norm), **paramwise)
    custom = paramwise.get('custom_keys', {})
    for name in ('weight', 'bias'):
        if f'sn.{name}' in custom:
            assert found[f'sn.{name}'] == (0.1 * 3., 1e-4)
        else:
            assert found[f'sn.{name}'] == found[f'bn.{name}'], name
    # The conv keeps mmengine's own rules.
    assert found['conv.weight'][0] == 0.1


def test_ratio_logits_follow_custom_keys_or_the_base():
    model = Pair(SN)
    found = groups(model, norm_decay_mult=0.)
    assert found['sn.weight'] == found['sn.bias'] == (0.1, 0.)
    assert found['sn.mean_weight'] == found['sn.var_weight'] == (0.1, 1e-4)
    found = groups(
        model,
        norm_decay_mult=0.,
        custom_keys=dict(mean_weight=dict(decay_mult=0.)))
    assert found['sn.mean_weight'] == (0.1, 0.)
    assert found['sn.var_weight'] == (0.1, 1e-4)


def test_frozen_affine_parameters_are_left_out():
    model = Pair(SN)
    model.sn.weight.requires_grad_(False)
    found = groups(model, norm_decay_mult=0.)
    assert 'sn.weight' not in found and found['sn.bias'] == (0.1, 0.)
