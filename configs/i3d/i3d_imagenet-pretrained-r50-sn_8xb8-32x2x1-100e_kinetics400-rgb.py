# I3D ResNet-50 with SN, inflated from an SN ImageNet model (every SN
# parameter and buffer, ratio logits included).  SN statistics are taken over
# T x H x W.  Make the checkpoint with tools/convert_checkpoint.py (README).
_base_ = './i3d_imagenet-pretrained-r50-bn_8xb8-32x2x1-100e_kinetics400-rgb.py'

model = dict(
    backbone=dict(
        pretrained='checkpoints/resnet50-v1_sn-8x32_in1k.pth',
        norm_cfg=dict(type='SN'),
        norm_eval=False))
# SN recipe: no weight decay on the ratio logits.
optim_wrapper = dict(paramwise_cfg={{_base_.sn_paramwise_cfg}})
# DDP does not broadcast buffers: merge the per-GPU running statistics
# (means and second moments) before checkpoints and validation.
custom_hooks = {{_base_.sn_custom_hooks}}
# The SN paper's test statistics: batch averages once training ends
# (../_base_/switchable_norm.py).
default_hooks = {{_base_.sn_default_hooks}}
