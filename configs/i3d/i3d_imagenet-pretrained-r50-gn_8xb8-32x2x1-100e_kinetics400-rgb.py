# I3D ResNet-50 with GN (32 groups), inflated from the GN paper's ImageNet
# model.  That model was trained on BGR input in 0-255 with the mean
# subtracted and no scaling, so the preprocessor does the same (decoders give
# RGB; ``to_rgb`` swaps the channel order either way).
_base_ = './i3d_imagenet-pretrained-r50-bn_8xb8-32x2x1-100e_kinetics400-rgb.py'

model = dict(
    backbone=dict(
        pretrained='open-mmlab://detectron/resnet50_gn',
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)),
    data_preprocessor=dict(
        mean=[103.530, 116.280, 123.675], std=[1.0, 1.0, 1.0], to_rgb=True))
