"""Ratio extraction from checkpoints and the plot_ratios tool."""
import json
import re
import struct

import numpy as np
import pytest
import torch
from _helpers import run_tool
from torch import nn

from ssn_norm import SN, SSN, SyncSSN
from ssn_norm.analysis import (ResultWarning, checkpoint_ratios, group_of,
                               model_ratios, read_ratio_scalars,
                               state_dict_ratios)

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _tiny_detector(norm) -> nn.Module:
    """Module names as in an mmdet detector: a ResNet-like backbone with a
    stem norm and two stages, a neck and a two-head roi_head."""
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.bn1 = norm(4)
    model.backbone.layer1 = nn.Sequential(norm(4), norm(4))
    model.backbone.layer2 = nn.Sequential(norm(8), norm(8), norm(8))
    model.neck = nn.Sequential(norm(8))
    model.roi_head = nn.Module()
    model.roi_head.bbox_head = nn.Sequential(norm(8))
    model.roi_head.mask_head = nn.Sequential(norm(8, using_bn=False))
    model.other = nn.Linear(2, 2)  # not a norm: ignored
    for index, layer in enumerate(m for m in model.modules()
                                  if isinstance(m, (SN, SSN))):
        with torch.no_grad():  # distinct, non-uniform logits per layer
            k = layer.mean_weight.numel()
            layer.mean_weight.copy_(torch.linspace(-1., 1., k) * index / 3)
            layer.var_weight.copy_(torch.linspace(1., -.5, k) * index / 4)
    return model


def _ssn_detector() -> nn.Module:
    model = _tiny_detector(SSN)
    layers = [m for m in model.modules() if isinstance(m, SSN)]
    for index, layer in enumerate(layers):
        layer.radius.fill_(0.2 + 0.05 * index)
    # Freeze the two stage-1 layers the way training does: a training
    # forward at a radius that makes every ratio one-hot.
    model.backbone.layer1.train()
    for layer in model.backbone.layer1:
        layer.radius.fill_(0.9)
        layer(torch.randn(2, 4, 3, 3)).sum().backward()
    return model


def _save(model: nn.Module, path, wrap: bool = False) -> str:
    state = model.state_dict()
    if wrap:  # as a DistributedDataParallel model saves
        state = {'module.' + k: v for k, v in state.items()}
    # numpy objects in meta, as in real mmengine checkpoints (plain
    # weights_only loading refuses them; ssn_norm.compat allows them).
    torch.save(
        {
            'state_dict': state,
            'meta': {
                'seed': np.int64(3),
                'iter': 100
            }
        }, str(path))
    return str(path)


def _png_size(path):
    with open(path, 'rb') as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE, 'not a PNG file'
    assert head[12:16] == b'IHDR'
    return struct.unpack('>II', head[16:24])


@pytest.mark.parametrize('norm', [SN, SSN])
def test_checkpoint_ratios_equal_the_layers_own(tmp_path, norm):
    model = _tiny_detector(norm) if norm is SN else _ssn_detector()
    expected = {
        name: module.ratios()
        for name, module in model.named_modules()
        if isinstance(module, (SN, SSN))
    }
    layers = checkpoint_ratios(_save(model, tmp_path / 'm.pth', wrap=True))
    assert [lay.name for lay in layers] == list(expected)  # depth order
    for lay in layers:
        mean, var = expected[lay.name]
        assert lay.kind == norm.__name__
        assert torch.allclose(torch.tensor(lay.mean), mean, atol=1e-6)
        assert torch.allclose(torch.tensor(lay.var), var, atol=1e-6)
        assert sum(lay.mean) == pytest.approx(1, abs=1e-6)
    assert layers[-1].normalizers == ('IN', 'LN')
    assert layers[-1].share('mean', 'BN') == 0.
    # The same numbers straight from the live model.
    assert [(lay.mean, lay.var) for lay in model_ratios(model)
            ] == [(lay.mean, lay.var) for lay in layers]


def test_ssn_checkpoint_ratios_are_sparse_and_one_hot_once_frozen(tmp_path):
    model = _ssn_detector()
    layers = {
        lay.name: lay
        for lay in checkpoint_ratios(_save(model, tmp_path / 'ssn.pth'))
    }
    frozen = layers['backbone.layer1.0']
    assert frozen.frozen == (True, True) and frozen.one_hot
    assert sorted(frozen.mean) == [0., 0., 1.]
    assert frozen.radius == pytest.approx(0.9)
    live = layers['backbone.layer2.2']
    assert live.frozen == (False, False)
    assert live.radius == pytest.approx(0.2 + 0.05 * 5)
    # Once frozen, the one-hot choice is read from the logits, whatever the
    # radius buffer says afterwards.
    state = model.state_dict()
    state['backbone.layer1.0.radius'].fill_(0.)
    again = {lay.name: lay for lay in state_dict_ratios(state)}
    assert again['backbone.layer1.0'].mean == frozen.mean


def test_sync_layers_count_as_their_base_kind():
    model = nn.Sequential(SyncSSN(4))
    assert model_ratios(model)[0].kind == 'SSN'


def test_state_dict_errors_name_the_layer():
    with pytest.raises(ValueError, match=r'layer\.0: ratio logits must be'):
        state_dict_ratios({
            'layer.0.mean_weight': torch.ones(4),
            'layer.0.var_weight': torch.ones(4)
        })
    with pytest.raises(
            ValueError,
            match='bn looks like an SSN layer but lacks var_fixed'):
        state_dict_ratios({
            'bn.mean_weight': torch.ones(3),
            'bn.var_weight': torch.ones(3),
            'bn.radius': torch.zeros(1),
            'bn.mean_fixed': torch.zeros(1, dtype=torch.long)
        })


def test_groups_follow_stages_and_top_level_modules():
    assert group_of('backbone.layer3.5.bn2') == 'backbone.layer3'
    assert group_of('backbone.bn1') == 'backbone.stem'
    assert group_of('backbone.stem.1') == 'backbone.stem'
    assert group_of('roi_head.mask_head.convs.0.bn') == 'roi_head.mask_head'
    assert group_of('neck.fpn_convs.0.bn') == 'neck'
    assert group_of('decode_head.bottleneck.bn') == 'decode_head'
    assert group_of('backbone.conv1.bn') == 'backbone.stem'  # mmaction
    assert group_of('layer1.0.bn1', ()) == 'layer1'


def test_tool_writes_png_for_sn_and_ssn_side_by_side(tmp_path, capsys):
    sn = _save(_tiny_detector(SN), tmp_path / 'sn.pth')
    ssn = _save(_ssn_detector(), tmp_path / 'ssn.pth')
    assert run_tool('plot_ratios', sn, '--out', tmp_path / 'sn.png') == 0
    assert f"written to {tmp_path / 'sn.png'}" in capsys.readouterr().out
    width, height = _png_size(tmp_path / 'sn.png')
    assert width >= 500 and height >= 500
    assert run_tool('plot_ratios', sn, ssn, '--labels', 'SN', 'SSN',
                    '--out', tmp_path / 'out' / 'both.png') == 0
    both_width, both_height = _png_size(tmp_path / 'out' / 'both.png')
    assert both_width == 2 * width and both_height == height


def test_tool_refuses_bad_input_with_a_reason(tmp_path, capsys):
    plain = tmp_path / 'bn.pth'
    torch.save({'state_dict': nn.BatchNorm2d(3).state_dict()}, str(plain))
    assert run_tool('plot_ratios', plain, '--out', tmp_path / 'x.png') == 1
    assert re.match(r'error: .*has no SN/SSN layer',
                    capsys.readouterr().err)
    sn = _save(_tiny_detector(SN), tmp_path / 'sn.pth')
    assert run_tool('plot_ratios', sn, '--out', tmp_path / 'x.xyz') == 1
    assert re.match(r"error: .*cannot write 'xyz' images",
                    capsys.readouterr().err)
    assert not (tmp_path / 'x.png').exists()


def _fake_scalars(path, ssn=True):
    lines = []
    for step in (10, 20, 30):
        entry = {'lr': 0.01, 'loss': 1.0, 'iter': step, 'step': step}
        share = step / 100
        for group in ('all', 'backbone.layer1', 'neck'):
            for stat in ('mean', 'var'):
                entry[f'ratio/{group}/{stat}_IN'] = share
                entry[f'ratio/{group}/{stat}_LN'] = 0.5 - share
                entry[f'ratio/{group}/{stat}_BN'] = 0.5
        if ssn:
            entry.update({
                'ratio/one_hot_layers': step // 10,
                'ratio/ssn_layers': 5,
                'ssn_radius': share
            })
        lines.append(json.dumps(entry))
    lines.insert(2, json.dumps({'coco/bbox_mAP': 0.1, 'step': 20}))
    lines.append('{"ratio/all/mean_IN": 0.3, "ste')  # cut off by a kill
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(lines) + '\n')
    return path


def test_dynamics_read_each_quantity_from_the_hook_that_logs_it(tmp_path):
    """Ratios and one-hot counts from RatioLoggerHook, the radius from
    SparsestMaxRadiusHook (``ssn_radius``); nothing else."""
    path = _fake_scalars(tmp_path / 'scalars.json')
    with pytest.warns(ResultWarning, match='malformed'):
        series = read_ratio_scalars([str(path)])
    assert series['ssn_radius'] == [(10., 0.1), (20., 0.2), (30., 0.3)]
    assert series['ratio/one_hot_layers'] == [(10., 1.), (20., 2.), (30., 3.)]
    assert not {'lr', 'loss', 'iter', 'coco/bbox_mAP'} & set(series)


def test_tool_draws_ratio_dynamics_from_a_run(tmp_path, capsys):
    run = tmp_path / 'run'
    _fake_scalars(run / '20240101_000000' / 'vis_data' / 'scalars.json')
    with pytest.warns(ResultWarning, match=r'scalars\.json:5: malformed'):
        assert run_tool('plot_ratios', '--scalars', run, '--out',
                        tmp_path / 'dyn.png') == 0
    width, height = _png_size(tmp_path / 'dyn.png')
    assert width >= 800 and height >= 600
    with pytest.warns(ResultWarning, match='malformed'):
        assert run_tool('plot_ratios', '--scalars', run, '--groups', 'head',
                        '--out', tmp_path / 'x.png') == 1
    assert re.match(r"error: groups \['head'\] were not",
                    capsys.readouterr().err)


def test_dynamics_without_ratio_scalars_says_how_to_log_them(tmp_path, capsys):
    path = tmp_path / 'scalars.json'
    path.write_text(json.dumps({'loss': 1.0, 'step': 1}) + '\n')
    assert run_tool('plot_ratios', '--scalars', path, '--out',
                    tmp_path / 'x.png') == 1
    assert re.search('custom_hooks=.*RatioLoggerHook', capsys.readouterr().err)
    with pytest.raises(SystemExit, match='^2$'):  # argparse usage error
        run_tool('plot_ratios', path, '--scalars', path, '--out',
                 tmp_path / 'x.png')
    assert 'give one or two checkpoints, or --scalars, not both' in (
        capsys.readouterr().err)
