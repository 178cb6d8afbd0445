"""tools/convert_checkpoint.py end to end: files in, files out."""
import importlib.util
import os.path as osp
import re
from collections import OrderedDict

import torch
from mmdet.models.backbones import ResNet
from mmengine.runner import load_checkpoint
from test_ckpt_resnet import bn_resnet, released

import ssn_norm  # noqa: F401

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool(name):
    spec = importlib.util.spec_from_file_location(
        name, osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert_tool = load_tool('convert_checkpoint')


def test_released_sn_file_converts_and_loads_through_init_cfg(
        tmp_path, capsys):
    _, checkpoint = released()
    src, dst = tmp_path / 'resnet50v1_sn.pth', tmp_path / 'out' / 'sn.pth'
    torch.save(checkpoint, src)
    assert convert_tool.main([str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert 'source: released-sn (released-sn), ResNet-50 (Bottleneck' in out
    assert 'dropped (ImageNet classifier): fc.weight, fc.bias' in out
    assert f'wrote {dst}' in out

    saved = torch.load(dst, weights_only=True)
    assert saved['meta']['norm'] == 'SN' and saved['meta']['depth'] == 50
    backbone = ResNet(
        depth=50,
        norm_cfg=dict(type='SN'),
        init_cfg=dict(type='Pretrained', checkpoint=str(dst)))
    backbone.init_weights()
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, saved['state_dict'][key], msg=key)
    source = checkpoint['state_dict']
    torch.testing.assert_close(backbone.layer4[2].bn3.mean_weight,
                               source['module.layer4.2.sn3.mean_weight'])
    # No missing or unexpected key: a strict load passes.
    load_checkpoint(
        ResNet(depth=50, norm_cfg=dict(type='SN')), str(dst), strict=True)


def test_foreign_and_unreadable_files_exit_nonzero(tmp_path, capsys):
    dst = tmp_path / 'out.pth'
    text = tmp_path / 'notes.txt'
    text.write_text('hello')
    detector = tmp_path / 'mask_rcnn.pth'
    state = OrderedDict(
        ('backbone.' + k, v) for k, v in bn_resnet(18).state_dict().items())
    state['neck.lateral_convs.0.conv.weight'] = torch.ones(256, 64, 1, 1)
    torch.save({'state_dict': state, 'meta': {}}, detector)
    cases = {
        str(text): 'not a PyTorch checkpoint',
        str(detector): r'1 keys are not part of a ResNet backbone '
        r'\(mmpretrain layout\): neck.lateral_convs.0.conv.weight',
        str(tmp_path / 'missing.pth'): 'no such file',
    }
    for src, message in cases.items():
        assert convert_tool.main([src, str(dst)]) == 1
        err = capsys.readouterr().err
        assert re.search(message, err), err
        assert 'nothing written' in err
        assert not dst.exists()


def test_pickled_objects_need_trust(tmp_path, capsys):
    src, dst = tmp_path / 'ckpt.pth', tmp_path / 'out.pth'
    state = bn_resnet(18).state_dict()
    # A pickled module object is refused by weights_only loading.
    torch.save({'state_dict': state, 'meta': {'cls': torch.nn.ReLU()}}, src)
    assert convert_tool.main([str(src), str(dst)]) == 1
    assert '--trust-pickle' in capsys.readouterr().err
    assert convert_tool.main([str(src), str(dst), '--trust-pickle']) == 0


def test_config_check_refuses_v1_weights_for_a_deep_stem(tmp_path, capsys):
    _, checkpoint = released()
    src, dst = tmp_path / 'sn.pth', tmp_path / 'out.pth'
    torch.save(checkpoint, src)
    config = tmp_path / 'v1d.py'
    config.write_text(
        "default_scope = 'mmdet'\n"
        "model = dict(backbone=dict(type='ResNetV1d', depth=50,\n"
        "    norm_cfg=dict(type='SN'),\n"
        "    init_cfg=dict(type='Pretrained', checkpoint='x.pth')))\n")
    assert convert_tool.main([str(src),
                              str(dst), '--config',
                              str(config)]) == 1
    err = capsys.readouterr().err
    assert 'does not fit ResNetV1d' in err and 'deep 3x3 stem' in err
    assert not dst.exists()

    config.write_text(config.read_text().replace('ResNetV1d', 'ResNet'))
    assert convert_tool.main([str(src),
                              str(dst), '--config',
                              str(config)]) == 0
    assert 'checked: loads strictly into ResNet' in capsys.readouterr().out


def test_to_i3d_inflates_into_the_config_backbone(tmp_path, capsys):
    src, dst = tmp_path / 'r18.pth', tmp_path / 'i3d.pth'
    bn = bn_resnet(18)
    torch.save({'state_dict': bn.state_dict()}, src)
    config = tmp_path / 'i3d.py'
    config.write_text(
        "default_scope = 'mmaction'\n"
        "custom_imports = dict(imports=['ssn_norm.convert.inflate_i3d'])\n"
        "model = dict(backbone=dict(type='ResNet3dExactInflate', depth=18,\n"
        "    pretrained2d=False, norm_cfg=dict(type='SSN')))\n")
    assert convert_tool.main(
        [str(src), str(dst), '--to', 'i3d', '--config',
         str(config)]) == 0
    out = capsys.readouterr().out
    assert 'target: SSN ResNet-18' in out and 'inflated into' in out
    state = torch.load(dst, weights_only=True)['state_dict']
    weight_2d = bn.state_dict()['layer1.0.conv1.weight']
    weight_3d = state['layer1.0.conv1.conv.weight']
    torch.testing.assert_close(weight_3d.sum(2), weight_2d)
    torch.testing.assert_close(state['layer1.0.conv1.bn.running_var'],
                               bn.layer1[0].bn1.running_var)
    assert state['layer1.0.conv1.bn.mean_fixed'].tolist() == [0]
