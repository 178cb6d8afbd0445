# DeepLabV3 R50b-D8 with SN on ADE20K; backbone from an SN ImageNet ResNet-50
# v1 converted by tools/convert_checkpoint.py, (8,32) by default (the (8,k)
# rows of SN paper Table VII differ only in this checkpoint, see README.md).
_base_ = [
    './deeplabv3_r50b-d8-syncbn_8xb2-80k_ade20k-512x512.py',
    '../_base_/switchable_norm.py'
]
sn_checkpoint = 'checkpoints/resnet50-v1_sn-8x32_in1k.pth'
norm_cfg = dict(type='SN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg, init_cfg=dict(checkpoint=sn_checkpoint)),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
optim_wrapper = dict(paramwise_cfg={{_base_.sn_paramwise_cfg}})
# DDP does not broadcast buffers: merge the per-GPU running statistics
# (means and second moments) before checkpoints and validation.
custom_hooks = {{_base_.sn_custom_hooks}}
