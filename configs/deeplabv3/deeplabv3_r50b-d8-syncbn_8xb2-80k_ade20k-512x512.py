# DeepLabV3, ResNet-50 D8 with SyncBN in backbone and heads on ADE20K,
# 8 GPUs x 2 images, 80k iterations (the images of mmseg's 4xb4-80k).
# Backbone: mmseg's 'ResNet' (7x7 stem, 'r50b'), the ResNet-50 v1 of the SN
# paper.  SN paper Table VII (ADE20K) baseline.
_base_ = [
    'mmseg::_base_/models/deeplabv3_r50-d8.py',
    'mmseg::_base_/datasets/ade20k.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py'
]
crop_size = (512, 512)
# Bound where defined in mmseg's base model: set in all three places.
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        type='ResNet',
        norm_cfg=norm_cfg,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    decode_head=dict(num_classes=150, norm_cfg=norm_cfg),
    auxiliary_head=dict(num_classes=150, norm_cfg=norm_cfg))
train_dataloader = dict(batch_size=2)
