"""Every video config builds and says what its name promises."""
import copy
import glob
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
import yaml
from mmengine.config import Config
from mmengine.utils import import_modules_from_strings
from torch import nn

import ssn_norm  # noqa: F401  stubs mmaction2's missing DRN before mmaction
from ssn_norm import SN, SSN

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'configs', 'i3d')
FULL = sorted(glob.glob(osp.join(CONFIG_DIR, '*.py')))
MINI = sorted(glob.glob(osp.join(CONFIG_DIR, 'mini', '*.py')))
PAPER = {  # SN paper, Table X: (top-1, top-5) by (norm, clips per GPU)
    ('bn', 8): (73.2, 90.9),
    ('gn', 8): (73.0, 90.6),
    ('sn', 8): (73.5, 91.2),
    ('bn', 4): (72.1, 90.0),
    ('gn', 4): (72.8, 90.6),
    ('sn', 4): (73.3, 91.2),
}
NORM_CLASSES = {
    'bn': nn.BatchNorm3d,
    'gn': nn.GroupNorm,
    'sn': SN,
    'ssn': SSN,
}


def name_of(path):
    return osp.splitext(osp.basename(path))[0]


def norm_of(path):
    """The normaliser token of a config name: ``...-sn_8xb8...`` → 'sn'."""
    tokens = name_of(path).replace('_', '-').split('-')
    found = [t for t in tokens if t in NORM_CLASSES]
    assert len(found) == 1, path
    return found[0]


def load(path):
    cfg = Config.fromfile(path)
    import_modules_from_strings(**cfg.custom_imports)
    return cfg


def build(cfg):
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.default_scope)
    return MODELS.build(cfg.model)


def test_the_config_set_is_complete():
    assert {(norm_of(p), name_of(p).split('_')[2][:5])
            for p in FULL} == {(n, b)
                               for n in NORM_CLASSES
                               for b in ('8xb8-', '8xb4-')}
    assert {norm_of(p) for p in MINI} == set(NORM_CLASSES)


@pytest.mark.parametrize('path', FULL + MINI, ids=name_of)
def test_config_builds_with_the_promised_norm(path):
    cfg = load(path)
    assert cfg.default_scope == 'mmaction'
    model = build(cfg)
    backbone = model.backbone
    assert type(backbone).__name__ == 'ResNet3dExactInflate'
    expected = NORM_CLASSES[norm_of(path)]
    norms = [m for m in backbone.modules() if hasattr(m, 'norm_name')]
    assert norms and all(type(m.norm) is expected for m in norms)
    assert all(m.norm_name == ('gn' if expected is nn.GroupNorm else 'bn')
               for m in norms)
    if path in FULL:  # I3D R50: stem + 16 blocks x 3 + 4 shortcuts
        assert len(norms) == 53
        assert backbone.conv1.conv.weight.shape == (64, 3, 5, 7, 7)
    if expected in (SN, SSN):
        # Statistics over T x H x W jointly: a clip normalises as its
        # flattened (N, C, T*H*W) self, not frame by frame.
        layer = backbone.conv1.norm.train()
        x = torch.randn(2, layer.num_features, 3, 4, 5)
        clip = copy.deepcopy(layer)(x)
        flat = copy.deepcopy(layer)(x.flatten(2)).view_as(x)
        frames = copy.deepcopy(layer)(x.transpose(1, 2).flatten(0, 1))
        torch.testing.assert_close(clip, flat)
        assert not torch.allclose(
            clip.transpose(1, 2).flatten(0, 1), frames, atol=1e-3)


@pytest.mark.parametrize('path', FULL, ids=name_of)
def test_full_config_recipe(path):
    cfg = load(path)
    norm, name = norm_of(path), name_of(path)
    clips = 8 if '_8xb8-' in name else 4
    backbone = cfg.model.backbone
    assert backbone.pretrained2d is True and backbone.depth == 50
    assert backbone.pretrained == {
        'bn': 'torchvision://resnet50',
        'gn': 'open-mmlab://detectron/resnet50_gn',
        'sn': 'checkpoints/resnet50-v1_sn-8x32_in1k.pth',
        'ssn': 'checkpoints/resnet50-v1_ssn-8x32_in1k.pth'
    }[norm]
    assert backbone.norm_eval is False
    assert cfg.train_dataloader.batch_size == clips
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(0.01 * clips / 8)
    assert cfg.auto_scale_lr.base_batch_size == 8 * clips
    assert cfg.train_cfg.max_epochs == 100
    sample = [t for t in cfg.train_pipeline if t.type == 'SampleFrames'][0]
    assert (sample.clip_len, sample.frame_interval, sample.num_clips) == \
        (32, 2, 1)
    # The paper's test: 10 clips sampled regularly, softmax scores averaged,
    # each clip one full-frame view at shorter side 256 (no crops).
    test_pipeline = cfg.test_dataloader.dataset.pipeline
    assert [t.type for t in test_pipeline] == [
        'DecordInit', 'SampleFrames', 'DecordDecode', 'Resize', 'FormatShape',
        'PackActionInputs'
    ]
    test_sample = test_pipeline[1]
    assert (test_sample.clip_len, test_sample.frame_interval,
            test_sample.num_clips, test_sample.test_mode) == (32, 2, 10, True)
    assert test_pipeline[3].scale == (-1, 256)
    assert cfg.test_dataloader.batch_size == 1  # frame widths differ
    assert cfg.model.cls_head.average_clips == 'prob'
    assert cfg.train_pipeline[0].type == 'DecordInit'
    # mmaction2 averages buffers (SN running statistics too) across ranks.
    assert cfg.default_hooks.sync_buffers.type == 'SyncBuffersHook'
    custom_keys = cfg.optim_wrapper.get('paramwise_cfg',
                                        {}).get('custom_keys', {})
    hooks = [h.type for h in cfg.get('custom_hooks', [])]
    if norm in ('sn', 'ssn'):
        for key in ('mean_weight', 'var_weight'):
            assert custom_keys[key].decay_mult == 0
            assert custom_keys[key].get('lr_mult', 1) == \
                (0.1 if norm == 'ssn' else 1)
    else:
        assert not custom_keys
    assert (cfg.optim_wrapper.get('type') == 'RatioClipOptimWrapper') == \
        (norm == 'ssn')
    assert ('SparsestMaxRadiusHook' in hooks) == (norm == 'ssn')
    if norm == 'gn':  # the detectron GN model's caffe-style input
        assert cfg.model.data_preprocessor.std == [1.0, 1.0, 1.0]
        assert cfg.model.data_preprocessor.to_rgb is True


@pytest.mark.parametrize('path', MINI, ids=name_of)
def test_mini_config_is_a_shrunk_child(path):
    cfg = load(path)
    with open(path) as f:
        parent_name = re.search(r"'\.\./(i3d_[^']+\.py)'", f.read()).group(1)
    parent = Config.fromfile(osp.join(CONFIG_DIR, parent_name))
    assert norm_of(parent_name) == norm_of(path) and '_8xb8-' in parent_name
    assert cfg.model.backbone.pretrained is None
    for loader in ('train', 'val', 'test'):
        dataset = cfg[f'{loader}_dataloader'].dataset
        assert dataset.data_root == 'data/tiny_kinetics/'
        assert dataset.type == 'VideoDataset'
    # A flip turns "left" into "right".
    assert 'Flip' not in [t.type for t in cfg.train_pipeline]
    assert cfg.model.cls_head.num_classes == 4
    # The parent's recipe is kept.
    for key in ('type', 'constructor', 'paramwise_cfg'):
        assert cfg.optim_wrapper.get(key) == parent.optim_wrapper.get(key)
    assert cfg.get('custom_hooks') == parent.get('custom_hooks')


def test_metafile_lists_every_config_with_the_paper_numbers():
    with open(osp.join(CONFIG_DIR, 'metafile.yml')) as f:
        meta = yaml.safe_load(f)
    collections = {c['Name'] for c in meta['Collections']}
    models = {m['Name']: m for m in meta['Models']}
    assert len(models) == len(meta['Models'])
    assert set(models) == {name_of(p) for p in FULL + MINI}
    for path in FULL + MINI:
        model = models[name_of(path)]
        assert model['In Collection'] in collections
        assert osp.join(ROOT, model['Config']) == path
        assert model['Results'] == []
        assert model['Metadata']['Training Data']
        norm = norm_of(path)
        if path in MINI:
            assert 'Paper' not in model
            assert model['Paper Reference'] in models
            continue
        clips = 8 if '_8xb8-' in path else 4
        assert model['Metadata']['Batch Size'] == 8 * clips
        if norm == 'ssn':
            assert 'Paper' not in model
            continue
        assert model['Metadata']['Testing'] == \
            '10 clips x 1 full-frame view (shorter side 256)'
        paper = model['Paper']
        assert paper['Title'] == ('Switchable Normalization for '
                                  'Learning-to-Normalize Deep Representation')
        assert paper['Table'] == 'X'
        top1, top5 = PAPER[(norm, clips)]
        assert paper['Metrics'] == {
            'Top 1 Accuracy': top1,
            'Top 5 Accuracy': top5
        }


def test_mmaction_models_import_after_ssn_norm():
    """mmaction2 1.2.0 lacks localizers/drn; ``import ssn_norm`` stubs it."""
    code = ('import ssn_norm, mmaction.models\n'
            'from mmaction.models.localizers import DRN\n'
            'try:\n'
            '    DRN()\n'
            'except ImportError as e:\n'
            '    print("DRN:", e)\n')
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True,
                            text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'DRN: DRN is not shipped in the mmaction2 1.2.0 wheel' in \
        result.stdout


def test_real_test_pipeline_gives_ten_full_frame_clips(tmp_path):
    """The 8xb8 BN config's test pipeline (all full-size configs inherit it)
    on a real decoded video: 10 clips of 32 frames, each the whole frame at
    shorter side 256, no crops (the inputs of the 10-clip test)."""
    from mmaction.utils import register_all_modules
    from mmengine.dataset import Compose

    from ssn_norm.datasets.tiny_kinetics import make_tiny_kinetics
    register_all_modules(init_default_scope=True)
    make_tiny_kinetics(
        str(tmp_path), num_train=4, num_val=4, frame_size=64, rawframes=False)
    (video, ) = glob.glob(str(tmp_path / 'videos_val' / '*'))[:1]
    cfg = load(
        osp.join(
            CONFIG_DIR, 'i3d_imagenet-pretrained-r50-bn_8xb8-32x2x1-'
            '100e_kinetics400-rgb.py'))
    pipeline = Compose(cfg.test_dataloader.dataset.pipeline)
    packed = pipeline(
        dict(filename=video, label=0, start_index=0, modality='RGB'))
    assert tuple(packed['inputs'].shape) == (10, 3, 32, 256, 256)
