# Two-process CPU smoke test of SyncSN (tests/test_dist_train.py): DeepLabV3
# on a quarter-width ResNet-18 D8 with SyncSN in the backbone and decode
# head, 2 processes x 2 images of 64x64, 4 iterations, then one validation
# and one checkpoint.  The auxiliary head keeps plain SN, whose per-process
# running statistics SyncNormStatsHook merges before the checkpoint.
# Built from mmseg's bases alone so it does not move with the mini configs.
# Data: ssn_norm.datasets.tiny_cityscapes.make_tiny_cityscapes(root) under
# $SSN_TINY_CITYSCAPES.
_base_ = [
    'mmseg::_base_/models/deeplabv3_r50-d8.py',
    'mmseg::_base_/datasets/cityscapes.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py',
    '../../configs/_base_/switchable_norm.py',
]
data_root = '{{$SSN_TINY_CITYSCAPES:data/tiny_cityscapes/}}'
crop_size = (64, 64)
iters = 4
sync_norm_cfg = dict(type='SyncSN', requires_grad=True)
norm_cfg = dict(type='SN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    # Stage widths 16-128 (BasicBlock): stage 3 gives 64, stage 4 128.
    backbone=dict(
        type='ResNet',
        depth=18,
        stem_channels=16,
        base_channels=16,
        norm_cfg=sync_norm_cfg,
        init_cfg=None),
    decode_head=dict(
        in_channels=128,
        channels=32,
        dilations=(1, 2, 4, 6),
        norm_cfg=sync_norm_cfg),
    auxiliary_head=dict(in_channels=64, channels=16, norm_cfg=norm_cfg))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(paramwise_cfg={{_base_.sn_paramwise_cfg}})
param_scheduler = [
    dict(type='PolyLR', power=0.9, begin=0, end=iters, by_epoch=False)
]
train_cfg = dict(max_iters=iters, val_interval=iters)
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=iters),
    visualization=dict(type='SegVisualizationHook', draw=False))
custom_hooks = [dict(type='SyncNormStatsHook')]
randomness = dict(seed=0)
