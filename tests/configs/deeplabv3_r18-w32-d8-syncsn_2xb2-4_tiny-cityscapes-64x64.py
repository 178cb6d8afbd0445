# Two-process CPU smoke test of SyncSN (tests/test_dist_train.py): the mini
# DeepLabV3 with SyncSN in the backbone and decode head, 2 processes x 2
# images of 64x64, 4 iterations, one validation and one checkpoint at the
# end.  The auxiliary head keeps plain SN, whose per-process running
# statistics SyncNormStatsHook merges before the checkpoint.
# Data: ssn_norm.datasets.tiny_cityscapes.make_tiny_cityscapes(root) under
# $SSN_TINY_CITYSCAPES.
_base_ = ('../../configs/deeplabv3/mini/'
          'deeplabv3_r18-w32-d8-sn_1xb4-200_tiny-cityscapes-128x128.py')
crop_size = (64, 64)
iters = 4
sync_norm_cfg = dict(type='SyncSN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(norm_cfg=sync_norm_cfg),
    decode_head=dict(norm_cfg=sync_norm_cfg))
train_dataloader = dict(
    batch_size=2,
    dataset=dict(pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations'),
        dict(type='RandomCrop', crop_size=crop_size),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackSegInputs')
    ]))
train_cfg = dict(max_iters=iters, val_interval=iters)
param_scheduler = [
    dict(type='PolyLR', power=0.9, begin=0, end=iters, by_epoch=False)
]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=iters))
custom_hooks = [dict(type='SyncNormStatsHook')]
