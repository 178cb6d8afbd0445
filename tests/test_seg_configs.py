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
import yaml
from mmengine.config import Config
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

import ssn_norm  # noqa: F401  registers the norms, hooks and wrappers
from ssn_norm import SN, SSN, SyncSN
from ssn_norm.layers.switchable_norm import _SwitchableNormBase

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
FAMILIES = ('deeplabv3', 'pspnet')
CONFIGS = sorted(
    osp.relpath(path, REPO) for family in FAMILIES for path in glob.glob(
        osp.join(REPO, 'configs', family, '**', '*.py'), recursive=True)
    if '/_base_/' not in path)
MS_TEST = [c for c in CONFIGS if c.endswith('_ms-flip-test.py')]
MINI = [c for c in CONFIGS if '/mini/' in c]
REAL = [c for c in CONFIGS if c not in MS_TEST and c not in MINI]

NORM_TYPES = {
    'syncbn': nn.SyncBatchNorm,
    'gn': nn.GroupNorm,
    'sn': SN,
    'syncsn': SyncSN,
    'ssn': SSN,
}
SN_CHECKPOINT = 'checkpoints/resnet50-v1_sn-8x32_in1k.pth'
SSN_CHECKPOINT = 'checkpoints/resnet50-v1_ssn-8x32_in1k.pth'
BACKBONE_INIT = {
    'syncbn': 'torchvision://resnet50',
    'gn': 'open-mmlab://contrib/resnet50_gn',
    'sn': SN_CHECKPOINT,
    'syncsn': SN_CHECKPOINT,
    'ssn': SSN_CHECKPOINT,
}
NORM_LAYERS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm,
               _SwitchableNormBase)


def norm_of(config):
    match = re.search(r'-(syncbn|gn|sn|syncsn|ssn)_', osp.basename(config))
    assert match, f'{config}: no norm in the name'
    return match.group(1)


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


def test_the_suite_is_complete():
    assert len(REAL) == 15 and len(MS_TEST) == 15
    for config in REAL:
        assert config.replace('.py', '_ms-flip-test.py') in MS_TEST
    assert {norm_of(c) for c in MINI} == {'syncbn', 'gn', 'sn', 'ssn'}


@pytest.mark.parametrize('config', REAL + MINI)
def test_config_builds_with_the_promised_norm_everywhere(config):
    cfg = load(config)
    norm = norm_of(config)
    model = build_model(cfg.model, 'meta')
    for part in ('backbone', 'decode_head', 'auxiliary_head'):
        types = norm_types(getattr(model, part))
        assert types and all(is_promised(t, norm)
                             for t in types), (part, types)
    # The 1x1 pooled branch of the decode head too (ASPP / PSP scale 1).
    head = model.decode_head
    branch = (
        head.image_pool
        if hasattr(head, 'image_pool') else head.psp_modules[0])
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
        type='Pretrained', checkpoint=BACKBONE_INIT[norm])
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs
    assert cfg.train_cfg.max_iters == (80000 if 'ade20k' in config else 40000)
    crop = re.search(r'(\d+)x\1\.py$', config).group(1)
    assert cfg.model.data_preprocessor.size == (int(crop), int(crop))
    if 'cityscapes' in config:
        assert cfg.model.test_cfg.mode == 'slide'
        assert cfg.model.test_cfg.crop_size == (int(crop), int(crop))
    hooks = [h['type'] for h in cfg.get('custom_hooks', [])]
    custom_keys = cfg.optim_wrapper.get('paramwise_cfg',
                                        {}).get('custom_keys', {})
    if norm == 'ssn':
        assert cfg.optim_wrapper.type == 'RatioClipOptimWrapper'
        assert cfg.optim_wrapper.constructor == \
            'SwitchableOptimWrapperConstructor'
        assert hooks == ['SparsestMaxRadiusHook', 'SyncNormStatsHook']
        assert custom_keys['mean_weight'] == dict(lr_mult=0.1, decay_mult=0.)
    elif norm in ('sn', 'syncsn'):
        assert cfg.optim_wrapper.type == 'OptimWrapper'
        assert custom_keys['var_weight'] == dict(decay_mult=0.)
        # Plain SN keeps per-GPU running statistics: merged by the hook;
        # SyncSN's are global already.
        assert hooks == ([] if norm == 'syncsn' else ['SyncNormStatsHook'])
    else:
        assert not custom_keys and hooks == []


@pytest.mark.parametrize('config', MS_TEST)
def test_multi_scale_test_configs(config):
    cfg = load(config)
    parent = load(config.replace('_ms-flip-test.py', '.py'))
    assert cfg.model.type == 'SegTTAModel'
    assert cfg.model.module == parent.model
    pipeline = cfg.test_dataloader.dataset.pipeline
    assert pipeline == parent.tta_pipeline
    aug = pipeline[1]
    assert aug['type'] == 'TestTimeAug'
    assert [t['scale_factor'] for t in aug['transforms'][0]
            ] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert [t['prob'] for t in aug['transforms'][1]] == [0., 1.]
    # Test only: nothing to train with.
    assert cfg.train_cfg is None and cfg.train_dataloader is None


def test_multi_scale_model_builds_around_the_parent():
    config = [c for c in MS_TEST if '-sn_' in c and 'pspnet' in c][0]
    model = build_model(load(config).model, 'meta')
    assert type(model).__name__ == 'SegTTAModel'
    assert norm_types(model.module.decode_head) == {SN}


@pytest.mark.parametrize('norm', ['sn', 'ssn'])
def test_ratio_logits_get_the_recipe_in_the_built_optimizer(norm):
    from mmengine.optim import build_optim_wrapper
    cfg = load(f'configs/deeplabv3/mini/deeplabv3_r18-d8-{norm}'
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
        assert first_base == './deeplabv3_r18-d8-sn_mini_tiny-cityscapes.py'
    else:
        assert re.fullmatch(
            rf'\.\./{family}_r50b-d8-{norm_of(config)}_8xb2-40k_'
            r'cityscapes-(769x769|713x713)\.py', first_base), first_base


def test_mini_data_root_follows_the_environment(monkeypatch, tmp_path):
    config = 'configs/deeplabv3/mini/deeplabv3_r18-d8-sn_mini_tiny-' \
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
    cfg = load('configs/deeplabv3/mini/deeplabv3_r18-d8-sn_mini_my-'
               'cityscapes.py')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = cfg[loader].dataset
        assert dataset.data_root == 'data/my_cityscapes/'
        assert dataset.type == 'CityscapesDataset'
    assert cfg.train_dataloader.dataset.pipeline == cfg.train_pipeline
    assert cfg.test_dataloader.dataset.pipeline == cfg.test_pipeline
    assert cfg.model.decode_head.norm_cfg.type == 'SN'


# Paper numbers from the issue (single-scale, multi-scale + flip mIoU).
PAPER = {
    ('deeplabv3', 'ade20k'): {
        'syncbn': (36.4, 37.7),
        'gn': (35.7, 36.3),
        'sn': (37.7, 38.4),
        'syncsn': (40.0, 40.4),
    },
    ('deeplabv3', 'cityscapes'): {
        'syncbn': (69.7, 73.0),
        'gn': (68.4, 73.1),
        'sn': (72.2, 75.8),
        'syncsn': (76.7, 77.5),
    },
    ('pspnet', 'cityscapes'): {
        'syncbn': (76.3, 76.9),
        'gn': (72.6, 74.3),
        'sn': (76.2, 77.3),
        'syncsn': (76.7, 77.8),
    },
}


@pytest.mark.parametrize('family', FAMILIES)
def test_metafile(family):
    with open(osp.join(REPO, 'configs', family, 'metafile.yml')) as f:
        meta = yaml.safe_load(f)
    collections = {c['Name'] for c in meta['Collections']}
    models = meta['Models']
    listed = sorted(m['Config'] for m in models)
    assert listed == sorted(c for c in REAL if f'/{family}/' in c)
    for model in models:
        config = model['Config']
        assert model['Name'] == osp.splitext(osp.basename(config))[0]
        assert model['In Collection'] in collections
        assert model['Results'] == []
        dataset = 'ade20k' if 'ade20k' in config else 'cityscapes'
        assert model['Metadata']['Training Data'] == (
            'ADE20K' if dataset == 'ade20k' else 'Cityscapes')
        assert model['Metadata']['Batch Size'] == 16
        assert model['Metadata']['Iterations'] == load(
            config).train_cfg.max_iters
        norm = norm_of(config)
        if norm == 'ssn':
            assert 'Paper' not in model  # the SN paper has no SSN rows
            continue
        paper = model['Paper']
        single, multi = PAPER[(family, dataset)][norm]
        assert paper['Metrics'] == {'mIoU': single, 'mIoU(ms+flip)': multi}
        assert paper['Table'] == ('VIII' if family == 'pspnet' else 'VII')


def test_sn_and_syncsn_are_the_same_model_on_one_process():
    """SyncSN configs differ from SN ones only in the norm class; without a
    process group SyncSN computes exactly SN."""
    sn = load('configs/deeplabv3/deeplabv3_r50b-d8-sn_8xb2-40k_cityscapes-'
              '769x769.py')
    syncsn = copy.deepcopy(
        load('configs/deeplabv3/deeplabv3_r50b-d8-syncsn_8xb2-40k_'
             'cityscapes-769x769.py'))
    for part in ('backbone', 'decode_head', 'auxiliary_head'):
        syncsn.model[part].norm_cfg.type = 'SN'
    assert syncsn.model == sn.model
    layer_a, layer_b = SN(8), SyncSN(8)
    layer_b.load_state_dict(layer_a.state_dict())
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(layer_a(x), layer_b(x), rtol=0, atol=0)
