# DeepLabV3, ResNet-50 D8 with SyncBN in backbone and heads, 8 GPUs x 2
# images, 40k iterations (the images of mmseg's 4xb2-80k schedule).
# The backbone is mmseg's 'ResNet' (7x7 stem, stride on the 3x3 conv; 'r50b'
# in mmseg's names), the ResNet-50 v1 of the SN paper, not the deep-stem
# ResNetV1c of mmseg's own R50-D8 configs.  SN paper Table VII baseline.
_base_ = [
    'mmseg::_base_/models/deeplabv3_r50-d8.py',
    'mmseg::_base_/datasets/cityscapes_769x769.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py'
]
crop_size = (769, 769)
# mmseg's base model binds norm_cfg where it is defined: a top-level norm_cfg
# in a child does not reach the model, so every child sets it in the three
# places below.
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
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(513, 513)))
train_dataloader = dict(batch_size=2)
