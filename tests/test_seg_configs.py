"""Every segmentation config builds and puts the promised norm everywhere.

mmseg's base model files bind ``norm_cfg`` where they are defined, so a norm
set only at the top level of a child would silently leave SyncBN in place:
these tests build each model and look at the layers themselves.
"""
import copy
import functools
import glob
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

import ssn_norm  # noqa: F401  registers the norms, hooks and wrappers
from ssn_norm import SN, SSN, SyncSN
from ssn_norm.layers import SwitchableNormBase as _SwitchableNormBase

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
FAMILIES = ('fcn', 'pspnet')
CONFIGS = sorted(
    osp.relpath(path, REPO) for family in FAMILIES for path in glob.glob(
        osp.join(REPO, 'configs', family, '**', '*.py'), recursive=True)
    if '/_base_/' not in path)
MINI = [c for c in CONFIGS if '/mini/' in c]
REAL = [c for c in CONFIGS if c not in MINI]
# The SN paper's eight rows of Tables VII / VIII per family and dataset,
# plus SSN (no paper row): the normaliser token of each config name.
ROW_TOKENS = ('syncbn', 'gn', 'sn-8x2', 'sn-8x4', 'sn-8x32', 'syncsn-8x2',
              'syncsn-8x4', 'syncsn-8x32', 'ssn')
SETTINGS = {
    ('fcn', 'cityscapes'): 'fcn-1conv_r50b-d8-{}_8xb2-40k_cityscapes-713x713',
    ('fcn', 'ade20k'): 'fcn-1conv_r50b-d8-{}_8xb2-80k_ade20k-512x512',
    ('pspnet', 'cityscapes'): 'pspnet_r50b-d8-{}_8xb2-40k_cityscapes-713x713',
}
# Ours (no paper row): group SN with two channel groups, the SN(8,2) row's
# child, the Table VII model on Cityscapes only.
OURS = {
    'configs/fcn/' + SETTINGS[('fcn', 'cityscapes')].format('gsn2-8x2') + '.py'
}

NORM_TYPES = {
    'syncbn': nn.SyncBatchNorm,
    'gn': nn.GroupNorm,
    'sn': SN,
    'syncsn': SyncSN,
    'ssn': SSN,
    'gsn2': SN,
}
# The group count of each norm's layers (group SN is SN with num_groups).
NUM_GROUPS = {'gsn2': 2}
BACKBONE_INIT = {
    'syncbn': 'torchvision://resnet50',
    'gn': 'open-mmlab://detectron/resnet50_gn',
    'ssn': 'checkpoints/resnet50-v1_ssn-8x32_in1k.pth',
}
NORM_LAYERS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm,
               _SwitchableNormBase)


def norm_of(config):
    """The normaliser in a config name: ``...-syncsn-8x2_...`` → 'syncsn'."""
    match = re.search(r'-(syncbn|gn|gsn2|sn|syncsn|ssn)(-8x\d+)?_',
                      osp.basename(config))
    assert match, f'{config}: no norm in the name'
    return match.group(1)


def imagenet_batch_of(config):
    """The k of an SN (8,k) config name, None for the other normalisers."""
    match = re.search(r'-(?:sn|syncsn|gsn2)-8x(\d+)_', osp.basename(config))
    return int(match.group(1)) if match else None


def backbone_init(config):
    """The ImageNet model the backbone of ``config`` must start from."""
    k = imagenet_batch_of(config)
    if k is not None:
        # Group SN: the SN model converted with --groups 2.
        suffix = '_g2' if norm_of(config) == 'gsn2' else ''
        return f'checkpoints/resnet50-v1_sn-8x{k}_in1k{suffix}.pth'
    return BACKBONE_INIT[norm_of(config)]


@pytest.fixture(scope='module', autouse=True)
def memoised_external_bases():
    """mmengine re-reads all ~200 metafiles of mmseg for every ``mmseg::``
    base it resolves (about 0.5 s each, 2 s per config here); the answer
    never changes within a run, so remember it while this module runs."""
    import mmengine.config.config as config_module
    original = config_module._get_external_cfg_path
    memo = {}

    def memoised(package_path, cfg_file):
        key = (package_path, cfg_file)
        if key not in memo:
            try:
                memo[key] = original(package_path, cfg_file)
            except ValueError as error:  # not a model name: a base file
                memo[key] = error
        if isinstance(memo[key], ValueError):
            raise memo[key]
        return memo[key]

    config_module._get_external_cfg_path = memoised
    yield
    config_module._get_external_cfg_path = original


@functools.lru_cache(maxsize=None)
def load(config):
    """The parsed config, shared between tests: copy before changing it."""
    return Config.fromfile(osp.join(REPO, config))


def build_model(model_cfg, device='cpu'):
    """Build with mmseg; ``device='meta'`` skips allocating and initialising
    the weights (seconds per R50 model on a small CPU), keeping the
    structure."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    with torch.device(device):
        return MODELS.build(model_cfg)


def norm_types(module):
    return {type(m) for m in module.modules() if isinstance(m, NORM_LAYERS)}


def is_promised(layer_type, norm):
    # mmengine registers SyncBN as its own SyncBatchNorm subclass; the
    # switchable norms must match exactly (SyncSN subclasses SN).
    if norm == 'syncbn':
        return issubclass(layer_type, nn.SyncBatchNorm)
    return layer_type is NORM_TYPES[norm]


def groups_of(module):
    """The ``num_groups`` of every switchable layer in ``module``."""
    return {
        m.num_groups
        for m in module.modules() if isinstance(m, _SwitchableNormBase)
    }


def test_the_suite_is_complete():
    expected = {
        f'configs/{family}/{pattern.format(token)}.py'
        for (family, _), pattern in SETTINGS.items()
        for token in ROW_TOKENS
    }
    assert set(REAL) == expected | OURS
    assert {norm_of(c) for c in MINI} == {'syncbn', 'gn', 'sn', 'ssn', 'gsn2'}


@pytest.mark.parametrize('config', REAL + MINI)
def test_config_builds_with_the_promised_norm_everywhere(config):
    cfg = load(config)
    norm = norm_of(config)
    model = build_model(cfg.model, 'meta')
    for part in ('backbone', 'decode_head', 'auxiliary_head'):
        types = norm_types(getattr(model, part))
        assert types and all(is_promised(t, norm)
                             for t in types), (part, types)
        if norm in ('sn', 'syncsn', 'ssn', 'gsn2'):
            assert groups_of(getattr(model,
                                     part)) == {NUM_GROUPS.get(norm, 1)}, part
    # PSPNet: the 1x1 pooled branch of the decode head too (scale 1).
    head = model.decode_head
    if hasattr(head, 'psp_modules'):
        branch = head.psp_modules[0]
        assert branch[0].output_size == 1
        assert is_promised(type(getattr(branch[1], branch[1].norm_name)), norm)
    # The SN paper's ResNet-50 v1: 7x7 stem, no deep stem.
    assert type(model.backbone).__name__ == 'ResNet'
    assert model.backbone.conv1.kernel_size == (7, 7)


@pytest.mark.parametrize('config', REAL)
def test_real_config_settings(config):
    cfg = load(config)
    norm = norm_of(config)
    assert cfg.model.pretrained is None
    assert cfg.model.backbone.init_cfg == dict(
        type='Pretrained', checkpoint=backbone_init(config))
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs
    assert cfg.train_cfg.max_iters == (80000 if 'ade20k' in config else 40000)
    # One norm_cfg, and it is the one in the model.
    assert cfg.model.decode_head.norm_cfg == {
        k: v
        for k, v in cfg.norm_cfg.items() if k != '_scope_'
    }
    crop = int(re.search(r'(\d+)x\1\.py$', config).group(1))
    assert crop == (512 if 'ade20k' in config else 713)
    assert cfg.model.data_preprocessor.size == (crop, crop)
    crops = [
        t for t in cfg.train_dataloader.dataset.pipeline
        if t['type'] == 'RandomCrop'
    ]
    assert [t['crop_size'] for t in crops] == [(crop, crop)]
    if 'cityscapes' in config:
        # 713x713 windows at 2/3 stride over the full-size image.
        assert cfg.model.test_cfg == dict(
            mode='slide', crop_size=(713, 713), stride=(476, 476))
        assert cfg.model.decode_head.align_corners is True
    else:
        assert cfg.model.test_cfg == dict(mode='whole')
    # GN: the GN paper's (Detectron's) model, fed its BGR, unscaled input.
    preprocessor = cfg.model.data_preprocessor
    if norm == 'gn':
        assert (preprocessor.mean, preprocessor.std,
                preprocessor.bgr_to_rgb) == ([103.530, 116.280,
                                              123.675], [1.0, 1.0, 1.0], False)
    else:
        assert preprocessor.bgr_to_rgb is True
    # SN, SyncSN, SSN: tested with batch-average statistics, computed once
    # training ends.
    batch_stats = cfg.default_hooks.get('batch_stats')
    if norm in ('sn', 'syncsn', 'ssn', 'gsn2'):
        assert batch_stats == dict(
            type='BatchStatsHook', num_batches=200, stages=('train_end', ))
    else:
        assert batch_stats is None
    hooks = [h['type'] for h in cfg.get('custom_hooks', [])]
    custom_keys = cfg.optim_wrapper.get('paramwise_cfg',
                                        {}).get('custom_keys', {})
    if norm == 'ssn':
        assert cfg.optim_wrapper.type == 'RatioClipOptimWrapper'
        assert cfg.optim_wrapper.constructor == \
            'SwitchableOptimWrapperConstructor'
        assert hooks == ['SparsestMaxRadiusHook', 'SyncNormStatsHook']
        assert custom_keys['mean_weight'] == dict(lr_mult=0.1, decay_mult=0.)
    elif norm in ('sn', 'syncsn', 'gsn2'):
        assert cfg.optim_wrapper.type == 'OptimWrapper'
        assert custom_keys['var_weight'] == dict(decay_mult=0.)
        # Plain SN keeps per-GPU running statistics: merged by the hook;
        # SyncSN's are global already.
        assert hooks == ([] if norm == 'syncsn' else ['SyncNormStatsHook'])
    else:
        assert not custom_keys and hooks == []


@pytest.mark.parametrize('norm', ['sn', 'ssn'])
def test_ratio_logits_get_the_recipe_in_the_built_optimizer(norm):
    from mmengine.optim import build_optim_wrapper
    cfg = load(f'configs/fcn/mini/fcn-1conv_r18-d8-{norm}'
               '_mini_tiny-cityscapes.py')
    model = build_model(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base_lr = cfg.optim_wrapper.optimizer.lr
    logits = {
        id(p)
        for n, p in model.named_parameters()
        if n.endswith(('mean_weight', 'var_weight'))
    }
    assert logits
    seen = 0
    for group in wrapper.optimizer.param_groups:
        if any(id(p) in logits for p in group['params']):
            seen += len(group['params'])
            assert group['weight_decay'] == 0
            expected_lr = base_lr * (0.1 if norm == 'ssn' else 1.0)
            assert group['lr'] == pytest.approx(expected_lr)
    assert seen == len(logits)
    if norm == 'ssn':
        assert type(wrapper).__name__ == 'RatioClipOptimWrapper'
        assert {id(p) for p in wrapper.ratio_params} == logits


@pytest.mark.parametrize('config', MINI)
def test_mini_configs_are_shrunk_children_of_the_real_ones(config):
    cfg = load(config)
    assert cfg.model.backbone.depth == 18
    assert cfg.model.backbone.base_channels == 16
    assert cfg.model.backbone.init_cfg is None
    assert cfg.train_dataloader.batch_size == 4
    assert cfg.train_cfg.max_iters == 150
    assert cfg.param_scheduler[0]['end'] == 150
    assert cfg.model.data_preprocessor.size == (128, 128)
    assert cfg.randomness == dict(seed=0)
    with open(osp.join(REPO, config)) as f:
        first_base = re.search(r"_base_ = \[?\s*'([^']+)'", f.read()).group(1)
    family = config.split('/')[1]
    if '_my-cityscapes' in config:  # the user-data example: a grandchild
        assert first_base == './fcn-1conv_r18-d8-sn_mini_tiny-cityscapes.py'
        return
    # SN minis shrink the SN(8,32) config.
    # Group SN's (ours) is the SN(8,2) row's child.
    token = {
        'sn': 'sn-8x32',
        'gsn2': 'gsn2-8x2'
    }.get(norm_of(config), norm_of(config))
    assert first_base == \
        f'../{SETTINGS[(family, "cityscapes")].format(token)}.py'
    # The real config's recipe is kept.
    parent = load(
        osp.relpath(
            osp.normpath(osp.join(REPO, osp.dirname(config), first_base)),
            REPO))
    for key in ('type', 'constructor', 'paramwise_cfg'):
        assert cfg.optim_wrapper.get(key) == parent.optim_wrapper.get(key)
    assert cfg.get('custom_hooks') == parent.get('custom_hooks')
    assert cfg.norm_cfg == parent.norm_cfg


def test_mini_data_root_follows_the_environment(monkeypatch, tmp_path):
    config = 'configs/fcn/mini/fcn-1conv_r18-d8-sn_mini_tiny-' \
             'cityscapes.py'
    path = osp.join(REPO, config)
    monkeypatch.delenv('SSN_TINY_CITYSCAPES', raising=False)
    assert Config.fromfile(path).train_dataloader.dataset.data_root == \
        'data/tiny_cityscapes/'
    monkeypatch.setenv('SSN_TINY_CITYSCAPES', str(tmp_path))
    cfg = Config.fromfile(path)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == str(tmp_path)


def test_user_data_child_overrides_paths_and_pipelines_in_every_loader():
    cfg = load('configs/fcn/mini/fcn-1conv_r18-d8-sn_mini_my-'
               'cityscapes.py')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = cfg[loader].dataset
        assert dataset.data_root == 'data/my_cityscapes/'
        assert dataset.type == 'CityscapesDataset'
    assert cfg.train_dataloader.dataset.pipeline == cfg.train_pipeline
    assert cfg.test_dataloader.dataset.pipeline == cfg.test_pipeline
    assert cfg.model.decode_head.norm_cfg.type == 'SN'


def test_sn_and_syncsn_are_the_same_model_on_one_process():
    """SyncSN configs differ from SN ones only in the norm class; without a
    process group SyncSN computes exactly SN."""
    pattern = SETTINGS[('fcn', 'cityscapes')]
    for k in (2, 4, 32):
        sn = load(f'configs/fcn/{pattern.format(f"sn-8x{k}")}.py')
        syncsn = copy.deepcopy(
            load(f'configs/fcn/{pattern.format(f"syncsn-8x{k}")}.py'))
        for part in ('backbone', 'decode_head', 'auxiliary_head'):
            syncsn.model[part].norm_cfg.type = 'SN'
        assert syncsn.model == sn.model
    layer_a, layer_b = SN(8), SyncSN(8)
    layer_b.load_state_dict(layer_a.state_dict())
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(layer_a(x), layer_b(x), rtol=0, atol=0)
