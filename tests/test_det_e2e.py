"""End to end: a user's child of the SN / SSN Mask R-CNN configs trains on
their own COCO-layout folder with ``tools/train.py`` and ``tools/test.py``
evaluates the checkpoint with pycocotools.

The child overrides nothing but the dataset paths and the pipeline (96 px
images instead of the parent's 128 px); the run is shortened on the command
line, as a user trying a config out would do.
"""
import glob
import json
import os
import os.path as osp

import pytest
import torch
from _helpers import run_tool_process

from ssn_norm.datasets.tiny_coco import make_tiny_coco

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MINI = osp.join(REPO, 'configs', 'mask_rcnn', 'mini')
PARENTS = {
    'SN': 'mask-rcnn_r18-sn_fpn_sn-head_mini_tiny-coco.py',
    'SSN': 'mask-rcnn_r18-ssn_fpn_ssn-head_mini_tiny-coco.py',
    # Ours: group SN (two channel groups), and SN of IN, LN and GN.
    'GSN2': 'mask-rcnn_r18-gsn2_fpn_gsn2-head_mini_tiny-coco.py',
    'SN-GN': 'mask-rcnn_r18-sn-gn_fpn_sn-gn-head_mini_tiny-coco.py',
}
# The ratio logits' shape: (K,), or (G, K) for group SN.
LOGIT_SHAPES = {'GSN2': (2, 3)}
# 8 images, 2 per batch: 4 iterations in one epoch; a fixed seed so the
# run is repeatable.
SHORTEN = [
    'train_cfg.max_epochs=1', 'train_dataloader.batch_size=2',
    'randomness.seed=0'
]
ITERS = 4
METRICS = ('coco/bbox_mAP', 'coco/segm_mAP')

USER_CHILD = """
_base_ = {parent!r}
data_root = {data_root!r}
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))
]
train_dataloader = dict(
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
"""


@pytest.fixture(scope='module')
def user_coco(tmp_path_factory):
    """A user's COCO-layout folder, not the suite's ``data/tiny_coco``."""
    root = tmp_path_factory.mktemp('my_coco')
    make_tiny_coco(str(root), num_train=8, num_val=4, image_size=96, seed=7)
    return str(root) + os.sep


def _run(tool, *args):
    return run_tool_process(tool, *args)


def _only(pattern):
    paths = glob.glob(pattern)
    assert len(paths) == 1, (pattern, paths)
    return paths[0]


def _last_val_metrics(work_dir):
    scalars = _only(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(scalars) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    return [e for e in entries if METRICS[0] in e][-1]


@pytest.mark.parametrize('norm', list(PARENTS))
def test_user_child_trains_saves_and_evaluates(norm, user_coco, tmp_path):
    config = tmp_path / 'my_mask-rcnn.py'
    config.write_text(
        USER_CHILD.format(
            parent=osp.join(MINI, PARENTS[norm]), data_root=user_coco))
    work_dir = str(tmp_path / 'train')
    _run('train.py', str(config), '--work-dir', work_dir, '--cfg-options',
         *SHORTEN)

    checkpoint = osp.join(work_dir, 'epoch_1.pth')
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        assert f.read().strip() == checkpoint
    state = torch.load(
        checkpoint, map_location='cpu', weights_only=False)['state_dict']
    # The normaliser really is in backbone and heads, and it was trained:
    # running statistics moved away from their initial 0 / 1.
    for prefix in ('backbone.layer4.1.bn2', 'neck.fpn_convs.0.bn',
                   'roi_head.bbox_head.shared_convs.3.bn',
                   'roi_head.mask_head.convs.0.bn'):
        assert state[prefix + '.mean_weight'].shape == LOGIT_SHAPES.get(
            norm, (3, ))
        if norm == 'SN-GN':  # no BN member: no running statistics
            assert prefix + '.running_mean' not in state
        else:
            assert state[prefix + '.running_mean'].abs().sum() > 0
        has_radius = prefix + '.radius' in state
        assert has_radius == (norm == 'SSN')
        if has_radius:
            # SparsestMaxRadiusHook: 0 -> 1 over the run, set before each
            # iteration, so the last of the ITERS iterations ran at 3/4.
            assert state[prefix + '.radius'].item() == pytest.approx(
                (ITERS - 1) / ITERS)

    test_dir = str(tmp_path / 'test')
    _run('test.py', str(config), checkpoint, '--work-dir', test_dir)
    # <timestamp>/<timestamp>.json; tools/test.py also writes run_info.json.
    with open(_only(osp.join(test_dir, '*', '[0-9]*_[0-9]*.json'))) as f:
        results = json.load(f)
    for key in METRICS:
        assert 0.0 <= results[key] <= 1.0, (key, results[key])
    # The saved checkpoint evaluates exactly like the model at the end of
    # training: statistics, ratios and radius survive the round trip.
    final_val = _last_val_metrics(work_dir)
    for key in METRICS:
        assert results[key] == final_val[key]
