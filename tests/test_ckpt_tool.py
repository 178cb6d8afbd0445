"""tools/convert_checkpoint.py end to end: files in, files out."""
import hashlib
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch
from _helpers import tool
from mmdet.models.backbones import ResNet
from mmengine.logging import HistoryBuffer
from mmengine.runner import load_checkpoint
from test_ckpt_resnet import bn_resnet, released

import ssn_norm  # noqa: F401
from ssn_norm.convert import files

convert_tool = tool('convert_checkpoint')


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


def test_groups_option_targets_group_sn(tmp_path, capsys):
    """--groups 2: the released SN logits copied to both channel groups;
    the file loads strictly into a num_groups=2 backbone."""
    _, checkpoint = released()
    src, dst = tmp_path / 'resnet50v1_sn.pth', tmp_path / 'sn_g2.pth'
    torch.save(checkpoint, src)
    assert convert_tool.main([str(src), str(dst), '--groups', '2']) == 0
    assert 'build the target with num_groups=2' in capsys.readouterr().out
    saved = torch.load(dst, weights_only=True)
    assert saved['meta']['num_groups'] == 2
    load_checkpoint(
        ResNet(depth=50, norm_cfg=dict(type='SN', num_groups=2)),
        str(dst),
        strict=True)


def test_normalizers_option_puts_bn_logits_in_gns_place(tmp_path, capsys):
    """--normalizers IN,LN,GN: IN and LN logits kept, BN's moved to GN,
    BN statistics dropped; the file loads strictly into an (IN, LN, GN)
    backbone, with --groups too."""
    _, checkpoint = released()
    src = tmp_path / 'resnet50v1_sn.pth'
    torch.save(checkpoint, src)
    plain, ilg = tmp_path / 'sn.pth', tmp_path / 'sn_in-ln-gn.pth'
    assert convert_tool.main([str(src), str(plain)]) == 0
    assert convert_tool.main([str(src),
                              str(ilg), '--normalizers', 'IN,LN,GN']) == 0
    assert 'logits IN from IN, LN from LN, GN from BN' in (
        capsys.readouterr().out)
    before = torch.load(plain, weights_only=True)['state_dict']
    saved = torch.load(ilg, weights_only=True)
    after = saved['state_dict']
    assert saved['meta']['normalizers'] == ['IN', 'LN', 'GN']
    for key in ('bn1.mean_weight', 'layer4.2.bn3.var_weight'):
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    assert not any(k.endswith(('running_mean', 'running_var')) for k in after)
    norm_cfg = dict(type='SN', normalizers=('IN', 'LN', 'GN'), gn_groups=32)
    load_checkpoint(ResNet(depth=50, norm_cfg=norm_cfg), str(ilg), strict=True)
    # Reordered members take their own logits; groups copy them.
    both = tmp_path / 'sn_g2_gn-in.pth'
    assert convert_tool.main(
        [str(src),
         str(both), '--normalizers', 'GN,IN', '--groups', '2']) == 0
    grouped = torch.load(both, weights_only=True)['state_dict']
    assert torch.equal(grouped['bn1.mean_weight'],
                       before['bn1.mean_weight'][[2, 0]].repeat(2, 1))
    load_checkpoint(
        ResNet(
            depth=50,
            norm_cfg=dict(
                type='SN',
                num_groups=2,
                normalizers=('GN', 'IN'),
                gn_groups=32)),
        str(both),
        strict=True)
    assert convert_tool.main(
        [str(src), str(tmp_path / 'x.pth'), '--normalizers', 'IN,BW']) == 1
    assert 'normalizers must be distinct names' in capsys.readouterr().err


@pytest.mark.parametrize('options, config', [
    (['--groups', '2'
      ], 'configs/mask_rcnn/mask-rcnn_r50-gsn2_fpn_gsn2-head_2x_coco.py'),
    (['--normalizers', 'IN,LN,GN'],
     'configs/mask_rcnn/mask-rcnn_r50-sn-gn_fpn_sn-gn-head_8xb1-2x_coco.py'),
    (['--groups', '2'], 'configs/fcn/'
     'fcn-1conv_r50b-d8-gsn2-8x2_8xb2-40k_cityscapes-713x713.py'),
])
def test_converted_files_fit_the_configs_that_name_them(
        options, config, tmp_path, capsys):
    """The conversions the READMEs give for our group SN and SN-with-GN
    configs: the file loads strictly into each config's backbone."""
    _, checkpoint = released()
    src, dst = tmp_path / 'resnet50v1_sn.pth', tmp_path / 'out.pth'
    torch.save(checkpoint, src)
    assert convert_tool.main(
        [str(src), str(dst), *options, '--config', config]) == 0
    assert f'checked: loads strictly into ResNet of {config}' in (
        capsys.readouterr().out)


def test_foreign_and_unreadable_files_exit_nonzero(tmp_path, capsys):
    dst = tmp_path / 'out.pth'
    text = tmp_path / 'notes.txt'
    # torch's weights_only unpickler reads this as a pickle it refuses.
    text.write_text("model = dict(type='ResNet')\n")
    detector = tmp_path / 'mask_rcnn.pth'
    state = OrderedDict(
        ('backbone.' + k, v) for k, v in bn_resnet(18).state_dict().items())
    state['neck.lateral_convs.0.conv.weight'] = torch.ones(256, 64, 1, 1)
    torch.save({'state_dict': state, 'meta': {}}, detector)
    cases = {
        # Said first, not advice to trust the file (it is no pickle).
        str(text):
        r"^error: \S*notes.txt: not a PyTorch checkpoint \(neither "
        r"a zip-based torch.save file nor a legacy torch pickle; it starts "
        r"with b'model = dict\(typ'\)",
        str(detector):
        r'1 keys are not part of a ResNet backbone '
        r'\(mmpretrain layout\): neck.lateral_convs.0.conv.weight',
        str(tmp_path / 'missing.pth'):
        'no such file',
    }
    for src, message in cases.items():
        assert convert_tool.main([src, str(dst)]) == 1
        err = capsys.readouterr().err
        assert re.search(message, err), err
        assert 'nothing written' in err and '--trust-pickle' not in err
        assert not dst.exists()


def test_pickled_objects_need_trust(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('SSN_NORM_TRUST_CHECKPOINTS', raising=False)
    src, dst = tmp_path / 'ckpt.pth', tmp_path / 'out.pth'
    state = bn_resnet(18).state_dict()
    # A pickled module object is refused by weights_only loading.
    torch.save({'state_dict': state, 'meta': {'cls': torch.nn.ReLU()}}, src)
    assert convert_tool.main([str(src), str(dst)]) == 1
    assert re.search(
        r'ckpt.pth: holds pickled objects that loading without running code '
        r'refuses \(Unsupported global: GLOBAL torch.nn.modules.activation.'
        r'ReLU was not an allowed global by default\); if you trust the '
        r'file, retry with trust_pickle=True \(--trust-pickle\)',
        capsys.readouterr().err)
    assert not dst.exists()
    with pytest.warns(UserWarning, match='unpickling .* in full'):
        assert convert_tool.main([str(src), str(dst), '--trust-pickle']) == 0
    dst.unlink()
    # The process-wide opt-in works for the converter too.
    monkeypatch.setenv('SSN_NORM_TRUST_CHECKPOINTS', '1')
    with pytest.warns(UserWarning, match='unpickling .* in full'):
        assert convert_tool.main([str(src), str(dst)]) == 0


@pytest.mark.parametrize('value', ['true', 'yes'])
def test_bad_trust_variable_is_named(tmp_path, capsys, monkeypatch, value):
    src, dst = tmp_path / 'ckpt.pth', tmp_path / 'out.pth'
    torch.save({'state_dict': bn_resnet(18).state_dict()}, src)
    monkeypatch.setenv('SSN_NORM_TRUST_CHECKPOINTS', value)
    assert convert_tool.main([str(src), str(dst)]) == 1
    err = capsys.readouterr().err
    assert re.search(
        f"SSN_NORM_TRUST_CHECKPOINTS='{value}': expected 1 .* or 0 / unset",
        err), err
    assert 'not a PyTorch checkpoint' not in err
    assert not dst.exists()


def test_training_checkpoint_converts_without_trust(tmp_path, capsys,
                                                    monkeypatch):
    """numpy values and mmengine logger state (what Runner checkpoints
    hold) load without --trust-pickle: nothing in them runs code."""
    monkeypatch.delenv('SSN_NORM_TRUST_CHECKPOINTS', raising=False)
    src, dst = tmp_path / 'iter_10.pth', tmp_path / 'out.pth'
    torch.save(
        {
            'state_dict': bn_resnet(18).state_dict(),
            'meta': {
                'seed': np.int64(3),
                'iter': 10
            },
            'message_hub': {
                'log_scalars': {
                    'train/loss': HistoryBuffer([0.5, 0.25], [1, 1])
                }
            }
        }, src)
    assert convert_tool.main([str(src), str(dst)]) == 0
    assert 'target: SN ResNet-18' in capsys.readouterr().out


SSN_RELEASE_MD5 = {
    '5c9fb111577b040e62461db51ffce69b': ('SSN ResNet-50 (8,32)', 77.2),
    'd7085632529a9b1945a28a4d3bf4cacb': ('SSN ResNet-50 (8,16)', 77.0),
    'af85a39920644421fc48e216aba6ff0e': ('SSN ResNet-50 (8,8)', 76.8),
    '949d4bd54a7c63a3371b941eb4d3ea69': ('SSN ResNet-50 (8,4)', 76.1),
    'dadb0f1a0c49c31aedd6cb83d4996a03': ('SSN ResNet-50 (8,2)', 75.9),
}


def test_known_releases_are_the_published_md5s():
    # The released SSN model zoo (papers/README.md): MD5 -> model, top-1.
    assert {
        md5: (release.name, release.top1)
        for md5, release in files.KNOWN_RELEASES.items()
    } == SSN_RELEASE_MD5
    assert {(r.source_format, r.depth)
            for r in files.KNOWN_RELEASES.values()} == {('released-ssn', 50)}


def saved_with_md5(tmp_path, checkpoint, name):
    """``checkpoint`` saved as ``tmp_path/name``: that path, the output
    path beside it and the file's MD5."""
    src, dst = tmp_path / name, tmp_path / 'out.pth'
    torch.save(checkpoint, src)
    return src, dst, hashlib.md5(src.read_bytes()).hexdigest()


def test_released_ssn_file_is_recognised_by_md5(tmp_path, capsys, monkeypatch):
    _, checkpoint = released(sparse=True)
    src, dst, md5 = saved_with_md5(tmp_path, checkpoint, 'ssn_8x2.pth')
    # We do not have the released files: this file stands for (8,2).
    monkeypatch.setattr(
        files, 'KNOWN_RELEASES',
        {md5: files.Release('SSN ResNet-50 (8,2)', 'released-ssn', 50, 75.9)})
    assert convert_tool.main([str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f'recognised by MD5 {md5}: the released SSN ResNet-50 (8,2) '
        'ImageNet model (top-1 75.9 in its release)\n'
        'source: released-ssn (released-ssn), ResNet-50')
    assert 'matches no released' not in out
    meta = torch.load(dst, weights_only=True)['meta']
    assert (meta['release'], meta['source_md5']) == ('SSN ResNet-50 (8,2)',
                                                     md5)


def test_unknown_file_is_converted_with_a_note(tmp_path, capsys):
    src, dst, md5 = saved_with_md5(tmp_path,
                                   {'state_dict': bn_resnet(18).state_dict()},
                                   'r18.pth')
    assert convert_tool.main([str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert (f'note: MD5 {md5} matches no released SSN checkpoint known to '
            'this tool; converted by its keys alone') in out
    assert 'recognised' not in out
    meta = torch.load(dst, weights_only=True)['meta']
    assert (meta['release'], meta['source_md5']) == (None, md5)


def test_release_hash_with_other_keys_is_refused(tmp_path, capsys,
                                                 monkeypatch):
    src, dst, md5 = saved_with_md5(tmp_path,
                                   {'state_dict': bn_resnet(18).state_dict()},
                                   'r18.pth')
    monkeypatch.setattr(
        files, 'KNOWN_RELEASES',
        {md5: files.Release('SSN ResNet-50 (8,32)', 'released-ssn', 50, 77.2)})
    assert convert_tool.main([str(src), str(dst)]) == 1
    err = capsys.readouterr().err
    assert (f'its MD5 {md5} is that of the released SSN ResNet-50 (8,32) '
            'model, but its keys read as bn ResNet-18; please report '
            'this') in err
    assert not dst.exists()


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
