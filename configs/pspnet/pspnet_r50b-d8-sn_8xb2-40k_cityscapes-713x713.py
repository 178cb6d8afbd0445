# PSPNet R50b-D8 with SN in backbone and heads; backbone from an SN ImageNet
# ResNet-50 v1 converted by tools/convert_checkpoint.py, (8,32) by default
# (the (8,k) rows of SN paper Table VIII differ only in this checkpoint).
# The pool-scale-1 branch normalises 1x1 maps: SN defines their IN variance
# as 0 (IN then maps to beta) and keeps LN/BN, so it stays finite.
_base_ = [
    './pspnet_r50b-d8-syncbn_8xb2-40k_cityscapes-713x713.py',
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
