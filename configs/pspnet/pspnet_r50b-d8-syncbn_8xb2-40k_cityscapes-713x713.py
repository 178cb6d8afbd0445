# PSPNet, ResNet-50 D8 with SyncBN in backbone and heads on Cityscapes with
# 713x713 crops (the PSPNet paper's), 8 GPUs x 2 images, 40k iterations.
# Backbone: mmseg's 'ResNet' (7x7 stem, 'r50b'), the ResNet-50 v1 of the SN
# paper.  SN paper Table VIII baseline.
_base_ = [
    'mmseg::_base_/models/pspnet_r50-d8.py',
    'mmseg::_base_/datasets/cityscapes.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py'
]
crop_size = (713, 713)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(
        type='RandomResize',
        scale=(2048, 1024),
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
# The base dataloader bound its pipeline at definition: replace it there.
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
# Bound where defined in mmseg's base model: set in all three places.
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        type='ResNet',
        norm_cfg=norm_cfg,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    decode_head=dict(norm_cfg=norm_cfg, align_corners=True),
    auxiliary_head=dict(norm_cfg=norm_cfg, align_corners=True),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(476, 476)))
