# I3D ResNet-50 with SSN, inflated from an SSN ImageNet model (logits and the
# mean_fixed / var_fixed / radius buffers carried over): the SN config with
# the SSN checkpoint and recipe.  Statistics over T x H x W.  Make the
# checkpoint with tools/convert_checkpoint.py (README).
_base_ = './i3d_imagenet-pretrained-r50-sn_8xb8-32x2x1-100e_kinetics400-rgb.py'
model = dict(
    backbone=dict(
        pretrained='checkpoints/resnet50-v1_ssn-8x32_in1k.pth',
        norm_cfg=dict(type='SSN')))
# SSN recipe: ratio logits with lr x 0.1, no decay, their gradient norm
# clipped to 1; the SparsestMax radius grows over training.
optim_wrapper = {{_base_.ssn_optim_wrapper}}
custom_hooks = {{_base_.ssn_custom_hooks}}
