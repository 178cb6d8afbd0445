"""tools/swap_norm.py: a norm swap that cannot silently do nothing."""
import re

import pytest
from _helpers import run_tool
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from torch import nn

import ssn_norm  # noqa: F401  registers the layers
from ssn_norm.apis import SwapError, count_norms, norm_layers, swap_norm

MASK_RCNN = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
DEEPLABV3 = ('mmseg::deeplabv3/'
             'deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py')
I3D = ('mmaction::recognition/i3d/'
       'i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py')
OCRNET = 'mmseg::ocrnet/ocrnet_r101-d8_4xb2-40k_cityscapes-512x1024.py'


def build(path):
    cfg = Config.fromfile(str(path))
    init_default_scope(cfg.default_scope)
    return cfg, MODELS.build(cfg.model)


def assert_only(model, norm, count):
    """Every norm layer of ``model`` is exactly ``norm`` and trainable."""
    layers = list(norm_layers(model))
    assert len(layers) == count
    assert {type(m).__name__ for _, m in layers} == {norm}
    assert all(p.requires_grad for _, m in layers for p in m.parameters())


@pytest.mark.parametrize(
    'config, norm, parts',
    [
        # BN† backbone: 11 frozen (frozen_stages=1, norm_eval=True).
        (MASK_RCNN, 'SN', {
            'backbone': 53
        }),
        # SyncBN in backbone, decode head and auxiliary head.
        (DEEPLABV3, 'SSN', {
            'backbone': 55,
            'decode_head': 6,
            'auxiliary_head': 1
        }),
        # BN3d from ResNet3d's class default, not named in the config.
        (I3D, 'SyncSN', {
            'backbone': 53
        }),
    ],
    ids=['mask-rcnn', 'deeplabv3', 'i3d'])
def test_built_child_holds_only_the_chosen_norm(tmp_path, config, norm, parts):
    out = tmp_path / 'child.py'
    result = swap_norm(config, norm, out=str(out))
    assert {p: sum(c.values()) for p, c in result.before.items()} == parts
    cfg, model = build(out)
    assert_only(model, norm, sum(parts.values()))
    assert {
        p: dict(c)
        for p, c in count_norms(model).items()
    } == {
        p: {
            norm: n
        }
        for p, n in parts.items()
    }
    # The recipe: importable by plain mmengine, the ratio-logit rule, the
    # hooks of the norm.
    assert 'ssn_norm' in cfg.custom_imports.imports
    keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    assert keys.mean_weight.decay_mult == 0 and keys.var_weight.decay_mult == 0
    hooks = [h.type for h in cfg.get('custom_hooks', [])]
    assert ('SparsestMaxRadiusHook' in hooks) == (norm == 'SSN')
    assert ('SyncNormStatsHook' in hooks) == (norm in ('SN', 'SSN'))
    # Tested with batch-average statistics, as the paper's rows.
    assert cfg.default_hooks.batch_stats.type == 'BatchStatsHook'
    assert cfg.default_hooks.checkpoint.type == 'CheckpointHook'
    if norm == 'SSN':
        assert cfg.optim_wrapper.type == 'RatioClipOptimWrapper'
        assert keys.mean_weight.lr_mult == 0.1
    # Short and inheriting, not a pasted config.
    text = out.read_text()
    assert text.count('\n') < 60
    assert re.search(rf"^_base_ = '{re.escape(config)}'$", text, re.M)


def test_mask_rcnn_unfreezes_and_i3d_inflates_exactly(tmp_path):
    det = swap_norm(MASK_RCNN, 'SSN', out=str(tmp_path / 'det.py'))
    assert det.before['backbone'] == {
        'BatchNorm2d (frozen)': 11,
        'BatchNorm2d': 42
    }
    assert 'model.backbone.norm_eval: True -> False' in det.changes
    assert 'model.backbone.frozen_stages: 1 -> -1' in det.changes
    cfg, _ = build(tmp_path / 'det.py')
    # The parent's BN options do not leak into SSN's arguments.
    assert dict(cfg.model.backbone.norm_cfg) == dict(
        type='SSN', requires_grad=True)
    assert cfg.model.backbone.norm_eval is False
    kept = swap_norm(
        MASK_RCNN,
        'SN',
        out=str(tmp_path / 'kept.py'),
        keep_frozen_stages=True)
    assert kept.after['backbone'] == {'SN (frozen)': 11, 'SN': 42}
    # mmaction's own inflation indexes the 2-D checkpoint for every norm
    # parameter, SN's ratio logits included: the exact one is used.
    cfg, _ = build(swap_norm(I3D, 'SN', out=str(tmp_path / 'i3d.py')).out)
    assert cfg.model.backbone.type == 'ResNet3dExactInflate'
    assert '*.mean_weight' in cfg.model.backbone.inflate_allow_missing
    assert 'ssn_norm.convert.inflate_i3d' in cfg.custom_imports.imports


def test_norm_configs_nested_in_lists(tmp_path):
    # OCRNet's decode_head is a list of two heads: written whole.
    out = tmp_path / 'ocr.py'
    result = swap_norm(OCRNET, 'SN', out=str(out))
    cfg, model = build(out)
    assert [h.norm_cfg.type for h in cfg.model.decode_head] == ['SN', 'SN']
    assert_only(model, 'SN',
                sum(sum(c.values()) for c in result.before.values()))


@MODELS.register_module(force=True)
class _HardNormNet(nn.Module):
    """One norm from norm_cfg, one hard-coded: a swap must not pass."""

    def __init__(self, norm_cfg=None):
        super().__init__()
        from mmcv.cnn import build_norm_layer
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = build_norm_layer(norm_cfg or dict(type='BN'), 4)[1]
        self.fixed = nn.BatchNorm2d(4)


def test_a_layer_the_swap_cannot_reach_is_an_error(tmp_path):
    config = tmp_path / 'hard.py'
    config.write_text("default_scope = 'mmengine'\n"
                      "model = dict(type='_HardNormNet')\n")
    out = tmp_path / 'child.py'
    with pytest.raises(
            SwapError,
            match=r'1 norm layers are not SN: fixed '
            r'\(BatchNorm2d\)'):
        swap_norm(str(config), 'SN', out=str(out))
    assert not out.exists()
    with pytest.raises(
            SwapError, match=r"one of SN, SSN, SyncSN, SyncSSN, "
            r"got 'BN'"):
        swap_norm(str(config), 'BN')
    with pytest.raises(FileNotFoundError, match=r"mmdet::mask_rcnn/"):
        swap_norm('mask_rcnn/missing.py', 'SN')


def test_tool_prints_before_and_after_per_part(tmp_path, capsys):
    out = tmp_path / 'child.py'
    assert run_tool('swap_norm', DEEPLABV3, '--norm', 'SyncSSN', '--out',
                    out) == 0
    printed = capsys.readouterr().out
    assert re.search(r'backbone +55 SyncBatchNorm -> 55 SyncSSN', printed)
    assert re.search(r'auxiliary_head +1 SyncBatchNorm -> 1 SyncSSN', printed)
    assert 'custom_hooks: + SparsestMaxRadiusHook' in printed
    assert f'wrote {out}' in printed
    # Without --out the child itself is printed, the summary as comments.
    assert run_tool('swap_norm', DEEPLABV3, '--norm', 'SN') == 0
    printed = capsys.readouterr().out
    assert printed.startswith('# Written by tools/swap_norm.py')
    assert '#   decode_head     6 SyncBatchNorm -> 6 SN' in printed


def test_gn_options_do_not_leak_into_neck_and_heads(tmp_path):
    # GN everywhere: backbone, FPN neck, box and mask heads.  A merged
    # num_groups=32 would make each SN a group SN of 32 groups.
    out = tmp_path / 'gn.py'
    result = swap_norm(
        'mmdet::gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py', 'SN', out=str(out))
    assert set(result.before) == {'backbone', 'neck', 'roi_head'}
    cfg, model = build(out)
    for part in (cfg.model.backbone, cfg.model.neck,
                 cfg.model.roi_head.bbox_head, cfg.model.roi_head.mask_head):
        assert dict(part.norm_cfg) == dict(type='SN', requires_grad=True)
    assert {m.num_groups for _, m in norm_layers(model)} == {1}
    assert_only(model, 'SN',
                sum(sum(c.values()) for c in result.before.values()))
