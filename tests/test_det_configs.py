"""Every detection config builds, and its name tells the truth.

Models are built on the ``meta`` device: construction, module types and the
optimizer's parameter groups are real, but no memory is allocated and no
weights are initialised, so the 36 configs build in seconds.
"""
import ast
import functools
import glob
import os.path as osp
import re

import pytest
import torch
import yaml
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ssn_norm import SN, SSN, SyncSN
from ssn_norm.datasets.tiny_coco import CLASSES
from ssn_norm.layers.switchable_norm import _SwitchableNormBase
from ssn_norm.optim import RatioClipOptimWrapper

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
FAMILIES = ('mask_rcnn', 'faster_rcnn')
CONFIGS = sorted(
    osp.relpath(path, REPO) for family in FAMILIES for path in glob.glob(
        osp.join(REPO, 'configs', family, '**', '*.py'), recursive=True)
    if '_base_' not in osp.relpath(path, REPO).split(osp.sep))
FULL_CONFIGS = [c for c in CONFIGS if osp.sep + 'mini' + osp.sep not in c]
MINI_CONFIGS = [c for c in CONFIGS if c not in FULL_CONFIGS]

NAME = re.compile(r'^(?P<arch>mask|faster)-rcnn_r(?P<depth>18|50)'
                  r'(?:-(?P<backbone>gn|sn|ssn|syncsn))?_fpn'
                  r'(?:_(?P<head>gn|sn|ssn|syncsn)-head)?'
                  r'_(?P<schedule>1x|2x|mini)_(?P<data>coco|tiny-coco)\.py$')
# The exact class each name token stands for (subclasses do not count: an
# SSN is no SN here).  No backbone token: upstream's frozen BN.
NORM_CLASSES = {
    None: nn.BatchNorm2d,
    'gn': nn.GroupNorm,
    'sn': SN,
    'ssn': SSN,
    'syncsn': SyncSN
}
NORM_BASES = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, _InstanceNorm,
              _SwitchableNormBase)
BACKBONE_CHECKPOINTS = {
    None: 'torchvision://resnet50',
    'gn': 'open-mmlab://contrib/resnet50_gn',
    'sn': 'checkpoints/resnet50-v1_sn-8x32_in1k.pth',
    'syncsn': 'checkpoints/resnet50-v1_sn-8x32_in1k.pth',
    'ssn': 'checkpoints/resnet50-v1_ssn-8x32_in1k.pth',
}
# Paper rows (SN paper, Tables V and VI: box AP, and mask AP for Mask R-CNN)
# by (arch, backbone token, head token); they sit beside the 2x configs.
PAPER = {
    ('faster', None, None): ('V', 'BN†', [36.7]),
    ('faster', None, 'gn'): ('V', 'BN†+GN', [37.2]),
    ('faster', None, 'sn'): ('V', 'BN†+SN', [38.0]),
    ('faster', 'gn', 'gn'): ('V', 'GN+GN', [38.2]),
    ('faster', 'sn', 'sn'): ('V', 'SN+SN', [39.3]),
    ('mask', None, None): ('VI', 'BN†', [38.6, 34.2]),
    ('mask', None, 'gn'): ('VI', 'BN†+GN', [39.5, 34.4]),
    ('mask', None, 'sn'): ('VI', 'BN†+SN', [40.0, 34.8]),
    ('mask', 'gn', 'gn'): ('VI', 'GN+GN', [40.2, 35.7]),
    ('mask', 'gn', 'sn'): ('VI', 'GN+SN', [40.4, 36.0]),
    ('mask', 'sn', 'sn'): ('VI', 'SN+SN', [41.0, 36.5]),
}
# The rows the issue asks for: (backbone token, head token).
ROWS = [(None, None), (None, 'gn'), (None, 'sn'), ('gn', 'gn'), ('gn', 'sn'),
        ('sn', 'sn'), ('ssn', 'ssn'), ('syncsn', 'syncsn')]


def _parse(config):
    match = NAME.match(osp.basename(config))
    assert match, f'{config} does not follow the naming scheme'
    return match.groupdict()


@functools.lru_cache(maxsize=None)
def _load(config):
    return Config.fromfile(osp.join(REPO, config))


@functools.lru_cache(maxsize=None)
def _build(config):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    with torch.device('meta'):
        return MODELS.build(_load(config).model)


def _norm_types(module):
    return {type(m) for m in module.modules() if isinstance(m, NORM_BASES)}


def _expected(token):
    return set() if token is None else {NORM_CLASSES[token]}


def test_config_set_is_complete():
    names = {osp.basename(c) for c in FULL_CONFIGS}
    expected = set()
    for arch in ('mask', 'faster'):
        for backbone, head in ROWS:
            for schedule in ('1x', '2x'):
                expected.add(f'{arch}-rcnn_r50'
                             f'{"-" + backbone if backbone else ""}_fpn'
                             f'{"_" + head + "-head" if head else ""}'
                             f'_{schedule}_coco.py')
    assert names == expected
    assert [_parse(c)['backbone']
            for c in MINI_CONFIGS] == ['gn', 'sn', 'ssn', None]


@pytest.mark.parametrize('config', CONFIGS)
def test_config_builds(config):
    cfg = _load(config)
    model = _build(config)
    arch = _parse(config)['arch']
    assert type(model).__name__ == {
        'mask': 'MaskRCNN',
        'faster': 'FasterRCNN'
    }[arch]
    assert cfg.default_scope == 'mmdet'
    assert cfg.custom_imports == dict(
        imports=['ssn_norm'], allow_failed_imports=False)


@pytest.mark.parametrize('config', CONFIGS)
def test_norms_are_what_the_name_says(config):
    name = _parse(config)
    model = _build(config)
    backbone, head = name['backbone'], name['head']
    backbone_norms = [
        m for m in model.backbone.modules() if isinstance(m, NORM_BASES)
    ]
    # ResNet-50: stem + 16 blocks x 3 + 4 downsamples; ResNet-18: 1+8x2+3.
    assert len(backbone_norms) == {'50': 53, '18': 20}[name['depth']]
    assert _norm_types(model.backbone) == {NORM_CLASSES[backbone]}
    assert model.backbone.norm1 is backbone_norms[0]
    # SN/SSN take BN's attribute names, so checkpoint keys are torchvision's.
    assert model.backbone.norm1_name == ('gn1' if backbone == 'gn' else 'bn1')

    # Head norm: every FPN conv, the four shared convs of the box head and
    # the four convs of the mask head; never the RPN head.
    assert _norm_types(model.rpn_head) == set()
    neck_convs = list(model.neck.lateral_convs) + list(model.neck.fpn_convs)
    bbox_head = model.roi_head.bbox_head
    parts = [(model.neck, neck_convs), (bbox_head, bbox_head.shared_convs)]
    if name['arch'] == 'mask':
        parts.append(
            (model.roi_head.mask_head, model.roi_head.mask_head.convs))
    for part, convs in parts:
        assert _norm_types(part) == _expected(head)
        assert all(conv.with_norm == (head is not None) for conv in convs)
    assert len(neck_convs) == 8
    assert type(bbox_head).__name__ == ('Shared2FCBBoxHead' if head is None
                                        else 'Shared4Conv1FCBBoxHead')
    assert len(bbox_head.shared_convs) == (0 if head is None else 4)
    if name['arch'] == 'mask':
        assert len(model.roi_head.mask_head.convs) == 4
    else:
        assert not model.roi_head.with_mask


@pytest.mark.parametrize('config', CONFIGS)
def test_norm_eval_is_explicit_and_effective(config):
    backbone = _parse(config)['backbone']
    model = _build(config)
    # Set in our own file, not inherited from mmdet's base by accident.
    assert _load(config).model.backbone.norm_eval is (backbone is None)
    model.train()
    frozen_stages = model.backbone.frozen_stages
    for name, module in model.backbone.named_modules():
        if not isinstance(module, NORM_BASES):
            continue
        in_stem = name == model.backbone.norm1_name
        in_frozen_stage = in_stem and frozen_stages >= 0 or any(
            name.startswith(f'layer{i}.') for i in range(1, frozen_stages + 1))
        assert module.training == (backbone is not None
                                   and not in_frozen_stage), name


@pytest.mark.parametrize('config', CONFIGS)
def test_ratio_logits_follow_the_recipe(config):
    name = _parse(config)
    cfg = _load(config)
    model = _build(config)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base_lr = cfg.optim_wrapper.optimizer.lr
    decay = cfg.optim_wrapper.optimizer.weight_decay
    is_ssn = 'ssn' in (name['backbone'], name['head'])
    ratio_ids = {
        id(p)
        for n, p in model.named_parameters()
        if n.endswith(('.mean_weight', '.var_weight')) and p.requires_grad
    }
    uses_switchable = bool({name['backbone'], name['head']}
                           & {'sn', 'ssn', 'syncsn'})
    assert bool(ratio_ids) == uses_switchable
    seen = set()
    for group in wrapper.optimizer.param_groups:
        for param in group['params']:
            if id(param) in ratio_ids:
                seen.add(id(param))
                assert group['weight_decay'] == 0
                assert group['lr'] == pytest.approx(base_lr *
                                                    (0.1 if is_ssn else 1))
            elif param.dim() > 1:  # conv / fc weights keep their decay
                assert group['weight_decay'] == decay
                assert group['lr'] == base_lr
    assert seen == ratio_ids
    assert isinstance(wrapper, RatioClipOptimWrapper) == is_ssn
    if is_ssn:
        assert {id(p) for p in wrapper.ratio_params} == ratio_ids
        assert wrapper.ratio_clip_grad == dict(max_norm=1.0)


@pytest.mark.parametrize('config', CONFIGS)
def test_hooks(config):
    name = _parse(config)
    tokens = {name['backbone'], name['head']}
    hooks = [h['type'] for h in _load(config).get('custom_hooks', [])]
    expected = []
    if 'ssn' in tokens:
        expected.append('SparsestMaxRadiusHook')
    if tokens & {'sn', 'ssn'}:
        # Plain SN/SSN keep per-process running statistics.
        expected.append('SyncNormStatsHook')
    assert hooks == expected


@pytest.mark.parametrize('config', FULL_CONFIGS)
def test_upstream_schedule_data_and_pretraining(config):
    name = _parse(config)
    cfg = _load(config)
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs
    assert cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.optim_wrapper.optimizer == dict(
        type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001)
    epochs, milestones = {
        '1x': (12, [8, 11]),
        '2x': (24, [16, 22])
    }[name['schedule']]
    assert cfg.train_cfg.max_epochs == epochs
    warmup, steps = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and warmup.end == 500
    assert (steps.type, steps.milestones, steps.end) == ('MultiStepLR',
                                                         milestones, epochs)
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
    assert cfg.model.backbone.init_cfg == dict(
        type='Pretrained', checkpoint=BACKBONE_CHECKPOINTS[name['backbone']])


@pytest.mark.parametrize('config', MINI_CONFIGS)
def test_mini_configs_are_shrunk_children_of_the_real_ones(config):
    name = _parse(config)
    with open(osp.join(REPO, config)) as f:
        tree = ast.parse(f.read())
    bases = next(
        ast.literal_eval(node.value) for node in tree.body
        if isinstance(node, ast.Assign) and node.targets[0].id == '_base_')
    parent = osp.normpath(osp.join(osp.dirname(config), bases[0]))
    assert osp.basename(parent) == osp.basename(config).replace(
        'r18', 'r50').replace('mini_tiny-coco', '1x_coco')
    assert parent in FULL_CONFIGS
    cfg, parent_cfg = _load(config), _load(parent)
    # The normaliser recipe is the parent's.
    for key in ('custom_hooks', 'custom_imports'):
        assert cfg.get(key) == parent_cfg.get(key)
    assert cfg.optim_wrapper.get('type') == parent_cfg.optim_wrapper.get(
        'type')
    assert cfg.model.backbone.norm_cfg == parent_cfg.model.backbone.norm_cfg
    # Shrunk, from scratch, on the tiny set, evaluated once at the end.
    assert cfg.model.backbone.init_cfg is None
    assert cfg.model.roi_head.bbox_head.num_classes == len(CLASSES)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = cfg[loader].dataset
        assert dataset.data_root == 'data/tiny_coco/'
        assert tuple(dataset.metainfo.classes) == CLASSES
    for evaluator in ('val_evaluator', 'test_evaluator'):
        assert cfg[evaluator].ann_file == (
            'data/tiny_coco/annotations/instances_val2017.json')
        assert cfg[evaluator].metric == ['bbox', 'segm']
    assert cfg.train_cfg.val_interval == cfg.train_cfg.max_epochs
    assert name['depth'] == '18'


@pytest.mark.parametrize('family', FAMILIES)
def test_metafile_lists_every_config_with_the_paper_numbers(family):
    with open(osp.join(REPO, 'configs', family, 'metafile.yml')) as f:
        meta = yaml.safe_load(f)
    collections = {c['Name'] for c in meta['Collections']}
    models = {m['Name']: m for m in meta['Models']}
    configs = [c for c in CONFIGS if c.split(osp.sep)[1] == family]
    assert len(models) == len(meta['Models'])  # no duplicate names
    assert sorted(models) == sorted(
        osp.splitext(osp.basename(c))[0] for c in configs)
    metric_names = ['box AP', 'mask AP']
    for config in configs:
        model = models[osp.splitext(osp.basename(config))[0]]
        name = _parse(config)
        assert model['Config'] == config.replace(osp.sep, '/')
        assert model['In Collection'] in collections
        assert model['Results'] == []
        if name['schedule'] == 'mini':
            # The leaderboard shows the shrunk parent's paper row, marked
            # as a different setting (docs/model_zoo.md).
            assert 'Paper' not in model
            reference = model['Paper Reference']
            assert reference == osp.splitext(osp.basename(config))[0].replace(
                'r18', 'r50').replace('mini_tiny-coco', '2x_coco')
            assert reference in models
            continue
        assert model['Metadata']['Training Data'] == 'COCO'
        assert model['Metadata']['Batch Size'] == 16
        assert model['Metadata']['Epochs'] == {
            '1x': 12,
            '2x': 24
        }[name['schedule']]
        row = PAPER.get((name['arch'], name['backbone'], name['head']))
        if row is None or name['schedule'] != '2x':
            assert 'Paper' not in model
            continue
        table, setting, values = row
        paper = model['Paper']
        assert (paper['Table'], paper['Setting']) == (table, setting)
        assert model['Metadata']['Normalization'] == setting
        assert paper['Metrics'] == dict(zip(metric_names, values))
        assert 'Switchable Normalization' in paper['Title']
