"""SSN deployment: plain modules, unchanged outputs, data-only files."""
import pytest
import torch
import torch.nn.functional as F
from _helpers import run_tool
from mmcv.cnn import ConvModule
from mmdet.models.backbones import ResNet
from torch import nn

import ssn_norm  # noqa: F401  registers SN / SSN
from ssn_norm import SN, SSN, SyncSSN
from ssn_norm.apis import load_deployed
from ssn_norm.deploy import (assert_plain, deploy_switchable_norms,
                             layer_choice, read_deployed, rebuild_deployed,
                             save_deployed)

NAMES = ('IN', 'LN', 'BN')
TOL = dict(rtol=1e-5, atol=1e-5)


def randomise(layer):
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_(0, 0.3)
        if layer.using_bn:
            layer.running_mean.normal_(0, 0.5)
            layer.running_var.uniform_(0.5, 2)
    return layer


def freeze(layer, mean, var):
    """An SSN layer frozen on (mean, var), as training leaves it."""
    with torch.no_grad():
        layer.mean_weight.copy_(F.one_hot(torch.tensor(mean), 3))
        layer.var_weight.copy_(F.one_hot(torch.tensor(var), 3))
        layer.mean_fixed.fill_(1)
        layer.var_fixed.fill_(1)
    return randomise(layer)


def frozen_ssn(channels, mean, var, cls=SSN):
    return freeze(cls(channels), mean, var)


CHOICES = [(m, v) for m in range(3) for v in range(3)]


@pytest.mark.parametrize(
    'shape', [(4, 8, 7, 9), (2, 8, 1, 1), (2, 8, 3, 4, 5)],
    ids=['2d', '1x1', 'video'])
@pytest.mark.parametrize(
    'choice', CHOICES, ids=[f'{NAMES[m]}-{NAMES[v]}' for m, v in CHOICES])
def test_every_choice_is_exact(choice, shape):
    layer = frozen_ssn(8, *choice)
    # A ReLU first: the norm has no conv to fold into.
    model = nn.Sequential(nn.ReLU(), layer)
    model.eval()
    x = torch.randn(*shape) * 3 + 1
    if shape[2:] == (1, 1):
        # IN on one element: x * w/√eps - x * w/√eps + b cancels; in fp32
        # SN's own rounding is ~1e-4 of b, so compare in float64.
        model.double()
        x = x.double()
    with torch.no_grad():
        expected = model(x)
        deployed = deploy_switchable_norms(model, spatial_dims=len(shape) - 2)
        got = model(x)
    assert [(d.mean, d.var)
            for d in deployed] == [(NAMES[choice[0]], NAMES[choice[1]])]
    assert not deployed[0].hardened
    if choice == (2, 2):
        assert type(model[1]).__name__ == f'BatchNorm{len(shape) - 2}d'
        assert not model[1].training
    else:
        assert deployed[0].replacement.startswith('SwitchedNorm')
    assert_plain(model)
    scale = expected.abs().max()
    torch.testing.assert_close(got / scale, expected / scale, **TOL)


def test_bn_choice_folds_into_the_preceding_conv():
    conv_module = ConvModule(3, 8, 3, norm_cfg=dict(type='SSN'))
    freeze(conv_module.bn, 2, 2)
    model = nn.Sequential(
        nn.Conv2d(3, 3, 1), frozen_ssn(3, 2, 2, SyncSSN), nn.ReLU(),
        conv_module, nn.Conv2d(8, 8, 3, bias=False), frozen_ssn(8, 2, 2),
        nn.ReLU(), nn.Conv2d(8, 8, 1), frozen_ssn(8, 0, 2))
    model.eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        expected = model(x)
        deployed = deploy_switchable_norms(model, check_input=x)
        got = model(x)
    assert [d.replacement for d in deployed] == [
        'folded into 0', 'folded into 3.conv', 'folded into 4',
        'SwitchedNorm(mean=IN, var=BN)'
    ]
    assert isinstance(model[1], nn.Identity)
    assert model[4].bias is not None  # created for the folded shift
    torch.testing.assert_close(got, expected, **TOL)


def ssn_resnet18(choices=None):
    backbone = ResNet(
        depth=18, norm_cfg=dict(type='SSN'), out_indices=(0, 1, 2, 3))
    generator = torch.Generator().manual_seed(1)
    for module in backbone.modules():
        if isinstance(module, SSN):
            choice = choices or torch.randint(3, (2, ), generator=generator)
            freeze(module, int(choice[0]), int(choice[1]))
    backbone.eval()
    return backbone


@pytest.mark.parametrize('choices', [(2, 2), None], ids=['BN', 'mixed'])
def test_mmdet_resnet_features_unchanged(choices):
    backbone = ssn_resnet18(choices)
    x = torch.randn(2, 3, 64, 64)
    tol = TOL
    if choices is None:
        # IN on layer4's 2x2 maps amplifies fp32 rounding through 20 random
        # layers to ~1e-5; in float64 the deployed network is exact.
        backbone.double()
        x, tol = x.double(), dict(rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        expected = backbone(x)
        deployed = deploy_switchable_norms(backbone)
        got = backbone(x)
    assert len(deployed) == 20
    if choices == (2, 2):
        # Every BN choice of a ResNet sits right after a conv.
        assert all(d.replacement.startswith('folded into') for d in deployed)
        assert isinstance(backbone.layer2[0].downsample[1], nn.Identity)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g / e.abs().max(), e / e.abs().max(), **tol)


def test_sn_needs_hardening_and_hardens_by_argmax():
    sn = randomise(SN(6))
    with torch.no_grad():
        sn.mean_weight.copy_(torch.tensor([0.1, 2.0, 0.3]))
        sn.var_weight.copy_(torch.tensor([0.5, 0.2, 0.4]))
    model = nn.Sequential(nn.ReLU(), sn)
    with pytest.raises(
            ValueError,
            match=r'1 switchable layers are not '
            r'one-hot \(1\): SN layers need harden="sn"'):
        deploy_switchable_norms(model)
    assert layer_choice(sn) is None and layer_choice(sn, True) == (1, 0)
    reference = frozen_ssn(6, 1, 0)
    reference.load_state_dict(sn.state_dict(), strict=False)
    freeze(reference, 1, 0).load_state_dict(sn.state_dict(), strict=False)
    reference.mean_weight.data = torch.tensor([0., 1., 0.])
    reference.var_weight.data = torch.tensor([1., 0., 0.])
    reference.eval()
    x = torch.randn(3, 6, 5, 5)
    deployed = deploy_switchable_norms(model, harden='sn')
    assert deployed[0].hardened and (deployed[0].mean,
                                     deployed[0].var) == ('LN', 'IN')
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x.relu()), **TOL)


def test_unfrozen_ssn_is_left_unless_all_layers_are_hardened():
    ssn = randomise(SSN(4))
    model = nn.Sequential(nn.ReLU(), ssn)
    with pytest.raises(ValueError, match='need more training at radius'):
        deploy_switchable_norms(model, harden='sn')
    assert deploy_switchable_norms(model, strict=False) == []
    with pytest.raises(ValueError, match=r'1 modules still need ssn_norm: 1'):
        assert_plain(model)
    ssn.radius.fill_(1.0)  # sparsestmax one-hot at this radius: deployable
    (layer, ) = deploy_switchable_norms(model)
    assert not layer.hardened


def test_check_input_catches_a_wrong_fold():

    class Misleading(nn.Module):
        """conv1/norm1 names, but the norm does not follow the conv."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 1)
            self.norm1_name = 'bn1'
            self.bn1 = frozen_ssn(4, 2, 2)

        def forward(self, x):
            return self.conv1(x) + self.bn1(x)

    model = Misleading()
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(RuntimeError, match=r'differs by .* fold=False'):
        deploy_switchable_norms(model, check_input=x)
    model = Misleading()
    model.eval()
    expected = model(x)
    deploy_switchable_norms(model, fold=False, check_input=x)
    torch.testing.assert_close(model(x), expected, **TOL)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="harden must be one of .* 'yes'"):
        deploy_switchable_norms(nn.Sequential(), harden='yes')
    with pytest.raises(ValueError, match='spatial_dims must be 1, 2 or 3'):
        deploy_switchable_norms(nn.Sequential(), spatial_dims=4)


def plain_model():
    """Every kind of replacement: folded conv (with no bias before),
    BatchNorm, SwitchedNorm."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False), frozen_ssn(8, 2, 2), nn.ReLU(),
        frozen_ssn(8, 0, 1), nn.Conv2d(8, 8, 3), frozen_ssn(8, 1, 2),
        nn.ReLU(), frozen_ssn(8, 2, 2))


def test_saved_file_is_data_only_and_rebuilds(tmp_path):
    torch.manual_seed(0)
    model = plain_model()
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    deployed = deploy_switchable_norms(model)
    assert {d.replacement.split('(')[0]
            for d in deployed
            } == {'folded into 0', 'SwitchedNorm', 'BatchNorm2d'}
    path = str(tmp_path / 'plain.pth')
    save_deployed(model, path, deployed, config='r.py',
                  cfg_options={'a.b': [1, 2]})
    # Nothing in the file needs more than torch's weights_only defaults.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    data = read_deployed(path)
    meta = data['meta']
    assert meta['format'] == 'ssn-norm-deployed/1'
    assert (meta['config'], meta['cfg_options']) == ('r.py', {'a.b': [1, 2]})
    assert [(e['name'], e['kind'], e['conv'], e['spatial_dims'])
            for e in meta['deployed']] == [('1', 'folded', '0', None),
                                           ('3', 'switched', None, None),
                                           ('5', 'switched', None, None),
                                           ('7', 'batch_norm', None, 2)]
    # A fresh model (other random values) takes the file strictly once
    # its structure is rebuilt, and computes the deployed outputs.
    torch.manual_seed(1)
    fresh = plain_model()
    rebuild_deployed(fresh, meta['deployed'])
    fresh.load_state_dict(data['state_dict'], strict=True)
    assert not fresh.training
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, **TOL)
    assert [type(m).__name__ for m in fresh] == [
        'Conv2d', 'Identity', 'ReLU', 'SwitchedNorm', 'Conv2d',
        'SwitchedNorm', 'ReLU', 'BatchNorm2d'
    ]


def test_rebuild_refuses_a_plan_that_does_not_fit(tmp_path):
    model = plain_model()
    deployed = deploy_switchable_norms(model)
    save_deployed(model, str(tmp_path / 'd.pth'), deployed)
    plan = read_deployed(str(tmp_path / 'd.pth'))['meta']['deployed']
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    with pytest.raises(ValueError,
                       match='1: the deployed file replaced a switchable '
                       'norm here, but the model has BatchNorm2d'):
        rebuild_deployed(other, plan)
    with pytest.raises(ValueError, match="unknown kind 'fused'"):
        rebuild_deployed(plain_model(), [dict(plan[1], kind='fused')])


def test_old_and_foreign_files_are_refused(tmp_path):
    path = str(tmp_path / 'old.pth')
    torch.save({'state_dict': {}, 'meta': {}}, path)
    with pytest.raises(ValueError,
                       match="meta.format is None, not 'ssn-norm-deployed/1'"):
        read_deployed(path)
    # The old format, a pickled whole module, is not even unpickled.
    torch.save(nn.Sequential(nn.ReLU()), path)
    with pytest.raises(
            ValueError,
            match=r'old.pth: holds pickled objects \(Unsupported global: '
            r'GLOBAL torch.nn.modules.container.Sequential was not an allowed '
            r'global by default\); deployed files of earlier versions were '
            r'whole pickled modules, .* deploy the trained checkpoint again'):
        read_deployed(path)


def test_save_refuses_what_weights_only_cannot_read(tmp_path):
    model = plain_model()
    deployed = deploy_switchable_norms(model)
    with pytest.raises(ValueError,
                       match=r"meta\['cfg_options'\]\['x'\] is a ReLU"):
        save_deployed(model, str(tmp_path / 'd.pth'), deployed,
                      cfg_options={'x': nn.ReLU()})
    assert not (tmp_path / 'd.pth').exists()


def test_tool_deploys_a_config_and_checkpoint(tmp_path, capsys):
    backbone = ssn_resnet18()
    checkpoint, out = tmp_path / 'ssn.pth', tmp_path / 'deployed.pth'
    torch.save({'state_dict': backbone.state_dict()}, checkpoint)
    config = tmp_path / 'r18.py'
    config.write_text(
        "default_scope = 'mmdet'\n"
        "model = dict(type='ResNet', depth=18, norm_cfg=dict(type='SSN'),\n"
        "             out_indices=(0, 1, 2, 3))\n")
    assert run_tool('deploy_ssn', config, checkpoint, out, '--check-shape',
                    '1', '3', '32', '32') == 0
    printed = capsys.readouterr().out
    assert 'replaced 20 layers (0 hardened)' in printed
    assert (f'load with ssn_norm.apis.load_deployed({str(config)!r}, '
            f'{str(out)!r})') in printed
    assert torch.serialization.get_unsafe_globals_in_checkpoint(
        str(out)) == []
    deployed = load_deployed(str(config), str(out))
    assert_plain(deployed)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for got, ref in zip(deployed(x), backbone(x)):
            torch.testing.assert_close(got / ref.abs().max(),
                                       ref / ref.abs().max(), **TOL)
    with pytest.raises(ValueError,
                       match=r"deployed with cfg_options=None, got "
                       r"\{'model.depth': 34\}"):
        load_deployed(str(config), str(out), {'model.depth': 34})
