"""Every detection config builds, and its name tells the truth.

Models are built on the ``meta`` device: construction, module types and the
optimizer's parameter groups are real, but no memory is allocated and no
weights are initialised, so the 47 configs build in seconds.  Which paper
row each config stands beside is tested in ``test_det_paper_rows.py``.
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
from ssn_norm.layers import SwitchableNormBase as _SwitchableNormBase
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
                  r'(?:-(?P<backbone>bn|gn-ws|gn|gsn2|sn-gn|sn|ssn|syncsn))?'
                  r'_(?P<neck>fpn|c4)'
                  r'(?:_(?P<head>bn|gn-ws|gn|gsn2|sn-gn|sn|ssn|syncsn)-head)?'
                  r'(?:_(?P<scratch>scratch))?'
                  r'_(?P<schedule>1x|2x|8xb1-2x|mini|4xb3-120k)'
                  r'_(?P<data>coco|tiny-coco)\.py$')
# The exact class each name token stands for (subclasses do not count: an
# SSN is no SN here).  No backbone token: frozen BN†.
NORM_CLASSES = {
    None: nn.BatchNorm2d,
    'bn': nn.BatchNorm2d,
    'gn': nn.GroupNorm,
    'gn-ws': nn.GroupNorm,  # beside weight-standardised convs
    'sn': SN,
    'ssn': SSN,
    'syncsn': SyncSN,
    'gsn2': SN,
    'sn-gn': SN,
}
# Ours (no paper row): tokens naming an SN of other groups or members, and
# what every layer of theirs must be; every other SN has the defaults.
SN_LAYOUTS = {
    'gsn2': dict(num_groups=2, normalizers=('IN', 'LN', 'BN'), gn_groups=None),
    'sn-gn': dict(num_groups=1, normalizers=('IN', 'LN', 'GN'), gn_groups=32),
}
DEFAULT_SN_LAYOUT = dict(
    num_groups=1, normalizers=('IN', 'LN', 'BN'), gn_groups=None)
OURS = {'gsn2', 'sn-gn'}
SWITCHABLE = {'sn', 'ssn', 'syncsn'} | OURS
NORM_BASES = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, _InstanceNorm,
              _SwitchableNormBase)
BACKBONE_CHECKPOINTS = {
    None: 'torchvision://resnet50',
    'bn': 'torchvision://resnet50',
    'gn': 'open-mmlab://detectron/resnet50_gn',
    'gn-ws': 'open-mmlab://jhu/resnet50_gn_ws',
    'sn': 'checkpoints/resnet50-v1_sn-8x32_in1k.pth',
    'syncsn': 'checkpoints/resnet50-v1_sn-8x32_in1k.pth',
    'ssn': 'checkpoints/resnet50-v1_ssn-8x32_in1k.pth',
    # The SN model converted with --groups 2 / --normalizers IN,LN,GN.
    'gsn2': 'checkpoints/resnet50-v1_sn-8x32_in1k_g2.pth',
    'sn-gn': 'checkpoints/resnet50-v1_sn-8x32_in1k_in-ln-gn.pth',
}
# mmdet ResNet's own initialisation, which the from-scratch rows name.
SCRATCH_INIT = [
    dict(type='Kaiming', layer='Conv2d'),
    dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])
]
# The FPN rows the issue asks for: (backbone token, head token), each on
# Detectron's 1x and 2x schedules.
FPN_ROWS = [(None, None), (None, 'gn'), (None, 'sn'), ('gn', 'gn'),
            ('gn', 'sn'), ('sn', 'sn'), ('ssn', 'ssn'), ('syncsn', 'syncsn')]
# mmdet's GN+WS beside Table V (Faster R-CNN 1x) and Table VI (Mask R-CNN
# 2x), each on its table's schedule, and the mmdet config it inherits.
GN_WS_ROWS = {
    'faster-rcnn_r50-gn-ws_fpn_gn-ws-head_1x_coco.py':
    'gn+ws/faster-rcnn_r50_fpn_gn-ws-all_1x_coco.py',
    'mask-rcnn_r50-gn-ws_fpn_gn-ws-head_2x_coco.py':
    'gn+ws/mask-rcnn_r50_fpn_gn-ws-all_2x_coco.py',
}
# The C4 rows (Table IV and SSN beside it): one normaliser in backbone and
# conv5 head, fine-tuned from ImageNet or (scratch) trained from scratch.
# Ours, Mask R-CNN only (no paper row): group SN and SN with a GN member
# (one image per GPU) everywhere, each on one schedule.
OURS_ROWS = [
    'mask-rcnn_r50-gsn2_fpn_gsn2-head_2x_coco.py',
    'mask-rcnn_r50-sn-gn_fpn_sn-gn-head_8xb1-2x_coco.py',
]
C4_ROWS = [(None, False), ('bn', False), ('gn', False), ('sn', False),
           ('ssn', False), ('bn', True), ('gn', True), ('sn', True),
           ('ssn', True)]
# Iterations, LR steps and warm-up end of each schedule token.
SCHEDULES = {
    '1x': (90000, [60000, 80000], 500),
    '2x': (180000, [120000, 160000], 500),
    '4xb3-120k': (120000, [80000], None),
    # 8 GPUs x 1 image: twice the 2x iterations and steps (Detectron's rule
    # for half the batch).
    '8xb1-2x': (360000, [240000, 320000], 500),
}


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


def _resnet_parts(model):
    """(prefix, module) of every ResNet part: the backbone, and for C4 the
    conv5 RoI head, which carries the backbone's normaliser."""
    parts = [('backbone', model.backbone)]
    if model.roi_head.with_shared_head:
        parts.append(('shared_head', model.roi_head.shared_head))
    return parts


def _frozen_stage(model, part, name):
    """Whether module ``name`` of ``part`` is in a stage that mmdet's
    ``frozen_stages`` freezes (stem and the first ``frozen_stages``)."""
    if part == 'shared_head':
        return False
    frozen_stages = model.backbone.frozen_stages
    stem = name.split('.')[0] in ('conv1', model.backbone.norm1_name)
    return (stem and frozen_stages >= 0) or any(
        name.startswith(f'layer{i}.') for i in range(1, frozen_stages + 1))


def test_config_set_is_complete():
    names = {osp.basename(c) for c in FULL_CONFIGS}
    expected = set()
    for arch in ('mask', 'faster'):
        for backbone, head in FPN_ROWS:
            for schedule in ('1x', '2x'):
                expected.add(f'{arch}-rcnn_r50'
                             f'{"-" + backbone if backbone else ""}_fpn'
                             f'{"_" + head + "-head" if head else ""}'
                             f'_{schedule}_coco.py')
    for norm, scratch in C4_ROWS:
        expected.add(f'faster-rcnn_r50{"-" + norm if norm else ""}_c4'
                     f'{"_" + norm + "-head" if norm else ""}'
                     f'{"_scratch" if scratch else ""}_4xb3-120k_coco.py')
    expected.update(GN_WS_ROWS)
    expected.update(OURS_ROWS)
    assert names == expected
    assert [_parse(c)['backbone'] for c in MINI_CONFIGS
            ] == ['gn', 'gsn2', 'sn-gn', 'sn', 'ssn', None]


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
    assert _norm_types(model.backbone) == {NORM_CLASSES[backbone]}
    assert model.backbone.norm1 is backbone_norms[0]
    # SN/SSN take BN's attribute names, so checkpoint keys are torchvision's.
    assert model.backbone.norm1_name == ('gn1' if backbone in ('gn', 'gn-ws')
                                         else 'bn1')
    assert _norm_types(model.rpn_head) == set()
    bbox_head = model.roi_head.bbox_head
    if name['neck'] == 'c4':
        # conv1-conv4 backbone (stem + 3+4+6 blocks x 3 + 3 downsamples),
        # conv5 the RoI head (3 blocks x 3 + 1 downsample), one normaliser.
        assert head == backbone
        assert len(backbone_norms) == 43
        assert model.backbone.out_indices == (2, )
        assert not model.with_neck
        shared_head = model.roi_head.shared_head
        assert type(shared_head).__name__ == 'ResLayer'
        assert len([
            m for m in shared_head.modules() if isinstance(m, NORM_BASES)
        ]) == 10
        assert _norm_types(shared_head) == {NORM_CLASSES[backbone]}
        assert _norm_types(bbox_head) == set()
        return

    # ResNet-50: stem + 16 blocks x 3 + 4 downsamples; ResNet-18: 1+8x2+3.
    assert len(backbone_norms) == {'50': 53, '18': 20}[name['depth']]
    assert not model.roi_head.with_shared_head
    # Head norm: every FPN conv, the four shared convs of the box head and
    # the four convs of the mask head; never the RPN head.
    neck_convs = list(model.neck.lateral_convs) + list(model.neck.fpn_convs)
    parts = [(model.neck, neck_convs), (bbox_head, bbox_head.shared_convs)]
    if name['arch'] == 'mask':
        parts.append(
            (model.roi_head.mask_head, model.roi_head.mask_head.convs))
    for part, convs in parts:
        assert _norm_types(part) == _expected(head)
        assert all(conv.with_norm == (head is not None) for conv in convs)
    # Group SN and SN's members: as the token says in every layer.
    for token, part in ((backbone, model.backbone), (head, model.neck),
                        (head, model.roi_head)):
        for layer in part.modules():
            if isinstance(layer, _SwitchableNormBase):
                assert dict(
                    num_groups=layer.num_groups,
                    normalizers=layer.normalizers,
                    gn_groups=layer.gn_groups) == SN_LAYOUTS.get(
                        token, DEFAULT_SN_LAYOUT), (token, layer)
    assert len(neck_convs) == 8
    assert type(bbox_head).__name__ == ('Shared2FCBBoxHead' if head is None
                                        else 'Shared4Conv1FCBBoxHead')
    assert len(bbox_head.shared_convs) == (0 if head is None else 4)
    if name['arch'] == 'mask':
        assert len(model.roi_head.mask_head.convs) == 4
    else:
        assert not model.roi_head.with_mask


@pytest.mark.parametrize('config', CONFIGS)
def test_frozen_bn_is_a_constant_transform_and_the_rest_trains(config):
    """BN† (no backbone token) is "a constant linear transformation":
    statistics in eval mode and affine parameters without gradient, in the
    backbone and (C4) the conv5 head.  Every other normaliser trains both,
    outside the stages upstream's ``frozen_stages`` freezes."""
    name = _parse(config)
    frozen = name['backbone'] is None
    cfg = _load(config)
    model = _build(config)
    # Set in our own files, not inherited from mmdet's base by accident.
    assert cfg.model.backbone.norm_eval is frozen
    assert cfg.model.backbone.norm_cfg.requires_grad is not frozen
    if name['neck'] == 'c4':
        assert cfg.model.roi_head.shared_head.norm_eval is frozen
        assert cfg.model.roi_head.shared_head.norm_cfg == (
            cfg.model.backbone.norm_cfg)
    model.train()
    checked = 0
    for part, module in _resnet_parts(model):
        for mod_name, norm in module.named_modules():
            if not isinstance(norm, NORM_BASES):
                continue
            in_frozen_stage = _frozen_stage(model, part, mod_name)
            trains = not frozen and not in_frozen_stage
            assert norm.training == trains, (part, mod_name)
            for param_name, param in norm.named_parameters():
                assert param.requires_grad == trains, (part, mod_name,
                                                       param_name)
                checked += 1
    assert checked > 0


@pytest.mark.parametrize('config', CONFIGS)
def test_weight_decay_and_ratio_logits_in_the_built_optimizer(config):
    """The paper's detection settings: "For all settings, we set weight
    decay to 0 for both [gamma] and [beta]" (every trainable norm layer,
    SN-family ones included), 1e-4 on the other network parameters; the
    ratio logits (ours): no decay, and the SSN recipe's lr x 0.1."""
    name = _parse(config)
    cfg = _load(config)
    model = _build(config)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base_lr = cfg.optim_wrapper.optimizer.lr
    assert cfg.optim_wrapper.optimizer.weight_decay == 1e-4
    is_ssn = 'ssn' in (name['backbone'], name['head'])
    ratio_ids = {
        id(p)
        for n, p in model.named_parameters()
        if n.endswith(('.mean_weight', '.var_weight')) and p.requires_grad
    }
    affine_ids = {
        id(p)
        for m in model.modules() if isinstance(m, NORM_BASES)
        for p in (m.weight, m.bias) if p is not None and p.requires_grad
    }
    uses_switchable = bool({name['backbone'], name['head']} & SWITCHABLE)
    assert bool(ratio_ids) == uses_switchable
    trains_norms = name['backbone'] is not None or name['head'] is not None
    assert bool(affine_ids) == trains_norms
    seen = set()
    for group in wrapper.optimizer.param_groups:
        for param in group['params']:
            seen.add(id(param))
            if id(param) in ratio_ids:
                assert group['weight_decay'] == 0
                assert group['lr'] == pytest.approx(base_lr *
                                                    (0.1 if is_ssn else 1))
            elif id(param) in affine_ids:
                assert group['weight_decay'] == 0
                assert group['lr'] == base_lr
            else:  # conv and fc weights and biases
                assert group['weight_decay'] == 1e-4
                assert group['lr'] == base_lr
    assert ratio_ids | affine_ids <= seen
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
    if tokens & {'sn', 'ssn', 'gsn2'}:
        # Plain SN/SSN keep per-process running statistics (SN without a
        # BN member, sn-gn, has none).
        expected.append('SyncNormStatsHook')
    assert hooks == expected
    # Batch-average test statistics wherever an SN-family layer is (sn-gn:
    # inherited, with no BN member to average; the hook says so and idles).
    # The minis average 4 batches (16 tiny images), for the suite's time
    # (not sn-gn's, whose hook has nothing to average).
    batch_stats = _load(config).default_hooks.get('batch_stats')
    if tokens & SWITCHABLE:
        few = config in MINI_CONFIGS and 'sn-gn' not in tokens
        assert batch_stats == dict(
            type='BatchStatsHook',
            num_batches=4 if few else 200,
            stages=('train_end', ))
    else:
        assert batch_stats is None


@pytest.mark.parametrize('config', FULL_CONFIGS)
def test_schedule_data_and_pretraining(config):
    name = _parse(config)
    cfg = _load(config)
    c4 = name['neck'] == 'c4'
    images, lr = (3, 0.01) if c4 else (2, 0.02)
    if name['schedule'].startswith('8xb1-'):
        images, lr = 1, 0.01  # the LR scaled with the batch
    assert cfg.train_dataloader.batch_size == images
    assert cfg.auto_scale_lr.base_batch_size == images * (4 if c4 else 8)
    assert cfg.optim_wrapper.optimizer == dict(
        type='SGD', lr=lr, momentum=0.9, weight_decay=0.0001)
    iters, milestones, warmup_end = SCHEDULES[name['schedule']]
    assert cfg.train_cfg == dict(
        type='IterBasedTrainLoop',
        max_iters=iters,
        val_interval=cfg.train_cfg.val_interval)
    *warmup, steps = cfg.param_scheduler
    if warmup_end is None:
        assert warmup == []
    else:
        assert [(w.type, w.end, w.by_epoch)
                for w in warmup] == [('LinearLR', warmup_end, False)]
    assert (steps.type, steps.milestones, steps.end,
            steps.by_epoch) == ('MultiStepLR', milestones, iters, False)
    assert cfg.default_hooks.checkpoint.by_epoch is False
    assert cfg.log_processor.by_epoch is False
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
    inits = [cfg.model.backbone.init_cfg]
    if c4:
        inits.append(cfg.model.roi_head.shared_head.init_cfg)
    # The GN paper's (Detectron's) GN model is fed its BGR, unscaled input;
    # every other ImageNet model and every scratch row torchvision's RGB.
    preprocessor = cfg.model.data_preprocessor
    if name['backbone'] == 'gn' and not name['scratch']:
        assert (preprocessor.mean, preprocessor.std,
                preprocessor.bgr_to_rgb) == ([103.530, 116.280,
                                              123.675], [1.0, 1.0, 1.0], False)
    else:
        assert (preprocessor.mean, preprocessor.std,
                preprocessor.bgr_to_rgb) == ([123.675, 116.28,
                                              103.53], [58.395, 57.12,
                                                        57.375], True)
    for init in inits:
        if name['scratch']:
            assert init == SCRATCH_INIT
        else:
            assert init == dict(
                type='Pretrained',
                checkpoint=BACKBONE_CHECKPOINTS[name['backbone']])
    assert cfg.model.backbone.frozen_stages == (-1 if name['scratch'] else 1)


@pytest.mark.parametrize('config', MINI_CONFIGS)
def test_mini_configs_are_shrunk_children_of_the_real_ones(config):
    name = _parse(config)
    with open(osp.join(REPO, config)) as f:
        tree = ast.parse(f.read())
    bases = next(
        ast.literal_eval(node.value) for node in tree.body
        if isinstance(node, ast.Assign) and node.targets[0].id == '_base_')
    parent = osp.normpath(osp.join(osp.dirname(config), bases[0]))
    assert parent in FULL_CONFIGS
    # The 1x config of its row; ours have one schedule only.
    candidates = [
        osp.basename(config).replace('r18',
                                     'r50').replace('mini_tiny-coco', schedule)
        for schedule in ('1x_coco', '2x_coco', '8xb1-2x_coco')
    ]
    assert osp.basename(parent) == next(
        c for c in candidates
        if osp.join(osp.dirname(parent), c) in FULL_CONFIGS)
    cfg, parent_cfg = _load(config), _load(parent)
    # The normaliser recipe is the parent's.
    for key in ('custom_hooks', 'custom_imports'):
        assert cfg.get(key) == parent_cfg.get(key)
    assert cfg.optim_wrapper.get('type') == parent_cfg.optim_wrapper.get(
        'type')
    assert cfg.model.backbone.norm_cfg == parent_cfg.model.backbone.norm_cfg
    assert cfg.model.backbone.norm_eval == parent_cfg.model.backbone.norm_eval
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
    # Epochs, not the parent's 90k iterations, with checkpoints and logs
    # counted in epochs (the suite reads epoch_<n>.pth).
    assert cfg.train_cfg == dict(
        type='EpochBasedTrainLoop', max_epochs=4, val_interval=4)
    assert cfg.default_hooks.checkpoint.by_epoch is True
    assert cfg.log_processor.by_epoch is True
    assert all(s.end <= 4 for s in cfg.param_scheduler if s.by_epoch)
    assert name['depth'] == '18'


@pytest.mark.parametrize('family', FAMILIES)
def test_metafile_lists_every_config_with_its_setting(family):
    with open(osp.join(REPO, 'configs', family, 'metafile.yml')) as f:
        meta = yaml.safe_load(f)
    collections = {c['Name']: c for c in meta['Collections']}
    weight_standardisation = collections.pop({
        'faster_rcnn': 'Faster R-CNN',
        'mask_rcnn': 'Mask R-CNN'
    }[family] + ' GN+WS')
    assert weight_standardisation['Paper'] == dict(
        Title='Weight Standardization', URL='https://arxiv.org/abs/1903.10520')
    models = {m['Name']: m for m in meta['Models']}
    configs = [c for c in CONFIGS if c.split(osp.sep)[1] == family]
    assert len(models) == len(meta['Models'])  # no duplicate names
    assert sorted(models) == sorted(
        osp.splitext(osp.basename(c))[0] for c in configs)
    for collection in collections.values():
        assert collection['Paper']['Title'] == (
            'Switchable Normalization for Learning-to-Normalize Deep '
            'Representation')
    for config in configs:
        model = models[osp.splitext(osp.basename(config))[0]]
        name = _parse(config)
        cfg = _load(config)
        assert model['Config'] == config.replace(osp.sep, '/')
        gn_ws = name['backbone'] == 'gn-ws'
        assert (model['In Collection'] in collections) != gn_ws
        assert model['Results'] == []
        meta_data = model['Metadata']
        if name['schedule'] == 'mini':
            # The leaderboard shows the shrunk parent's paper row, marked
            # as a different setting (docs/model_zoo.md).
            assert 'Paper' not in model
            reference = model['Paper Reference']
            assert reference in models
            assert reference in {
                osp.splitext(osp.basename(config))[0].replace(
                    'r18', 'r50').replace('mini_tiny-coco', schedule)
                for schedule in ('2x_coco', '8xb1-2x_coco')
            }
            # The SN paper has no SSN row and none of ours: that reference
            # shows nothing.
            assert ('Paper' in models[reference]) == (
                name['backbone'] not in OURS | {'ssn'})
            assert meta_data['Epochs'] == cfg.train_cfg.max_epochs
            continue
        assert 'Paper Reference' not in model
        gpus = 4 if name['neck'] == 'c4' else 8
        assert meta_data['Training Data'] == 'COCO'
        assert meta_data['GPUs'] == gpus
        assert meta_data['Batch Size'] == (
            gpus * cfg.train_dataloader.batch_size)
        assert meta_data['Iterations'] == cfg.train_cfg.max_iters
        assert 'Epochs' not in meta_data
        if name['scratch']:
            assert meta_data['Pretrained'] == 'none (from scratch)'
        else:
            assert meta_data['Pretrained'].split()[0] == (
                BACKBONE_CHECKPOINTS[name['backbone']])
        if {'ssn', *OURS} & {name['backbone'], name['head']}:
            # the SN paper has no SSN row, nor any of ours
            assert 'Paper' not in model
        if gn_ws:  # the SN paper has no GN+WS row; mmdet's is a Reference
            assert 'Paper' not in model and 'Reference' in model
            assert meta_data['Normalization'] == 'GN-WS+GN-WS'


def _mmdet_config(relative):
    import mmdet
    return Config.fromfile(
        osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', relative))


def _unscoped(node):
    """``node`` without the ``_scope_='mmdet'`` marks mmengine adds to
    dicts inherited from a package's config (``mmdet::``)."""
    if isinstance(node, dict):
        assert node.get('_scope_', 'mmdet') == 'mmdet'
        return {k: _unscoped(v) for k, v in node.items() if k != '_scope_'}
    if isinstance(node, (list, tuple)):
        return type(node)(_unscoped(v) for v in node)
    return node


@pytest.mark.parametrize('config', sorted(GN_WS_ROWS))
def test_gn_ws_rows_inherit_mmdets_gn_ws_settings(config):
    """The GN+WS rows are mmdet's gn+ws configs on the table's iteration
    schedule: the same model dict apart from ``norm_eval`` (spelt out:
    only _BatchNorm reads it), the same data and optimizer apart from the
    tables' norm decay (0, as every row beside them), and every conv
    of backbone, FPN, box head (and mask head) weight-standardised."""
    from mmcv.cnn.bricks import ConvWS2d
    family = 'faster_rcnn' if config.startswith('faster') else 'mask_rcnn'
    path = osp.join('configs', family, config)
    # Fresh, not _load's: building a detector writes train_cfg into the
    # roi_head dict it was given.
    cfg = Config.fromfile(osp.join(REPO, path))
    upstream = _mmdet_config(GN_WS_ROWS[config])
    ours = _unscoped(cfg.model.to_dict())
    theirs = upstream.model.to_dict()
    assert ours['backbone'].pop('norm_eval') is False
    assert theirs['backbone'].pop('norm_eval') is True
    assert ours == theirs
    assert cfg.model.backbone.conv_cfg == dict(type='ConvWS')
    assert cfg.model.backbone.norm_cfg == dict(
        type='GN', num_groups=32, requires_grad=True)
    # The optimizer too, but the norm layers' decay is the tables' (0).
    optim_wrapper = _unscoped(cfg.optim_wrapper.to_dict())
    assert optim_wrapper.pop('paramwise_cfg') == dict(norm_decay_mult=0.)
    assert optim_wrapper.pop('constructor') == \
        'SwitchableOptimWrapperConstructor'
    assert optim_wrapper == upstream.optim_wrapper.to_dict()
    for key in ('train_dataloader', 'val_evaluator'):
        assert _unscoped(cfg[key].to_dict()) == upstream[key].to_dict(), key
    model = _build(path)
    convs = [model.backbone]
    convs += [c.conv for c in model.neck.lateral_convs]
    convs += [c.conv for c in model.neck.fpn_convs]
    convs += [c.conv for c in model.roi_head.bbox_head.shared_convs]
    if family == 'mask_rcnn':
        convs += [c.conv for c in model.roi_head.mask_head.convs]
    for part in convs:
        plain = [
            type(m) for m in part.modules()
            if isinstance(m, nn.Conv2d) and not isinstance(m, ConvWS2d)
        ]
        assert plain == [], config
    backbone_ws = [
        m for m in model.backbone.modules() if isinstance(m, ConvWS2d)
    ]
    assert len(backbone_ws) == 53  # every ResNet-50 conv (1 + 48 + 4)
