# I3D ResNet-50 with SN, inflated from an SN ImageNet model (every SN
# parameter and buffer, ratio logits included).  SN statistics are taken over
# T x H x W.  Make the checkpoint with tools/convert_checkpoint.py (README).
_base_ = './i3d_imagenet-pretrained-r50-bn_8xb8-32x2x1-100e_kinetics400-rgb.py'

model = dict(
    backbone=dict(
        pretrained='checkpoints/resnet50_sn_imagenet.pth',
        norm_cfg=dict(type='SN'),
        norm_eval=False))
# SN recipe: no weight decay on the ratio logits.
optim_wrapper = dict(paramwise_cfg={{_base_.sn_paramwise_cfg}})
