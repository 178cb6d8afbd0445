# BN† backbone; SN in FPN and the 4conv-1fc box head
# (placement and norm_cfg in ../_base_/det_norms.py).
_base_ = './faster-rcnn_r50_fpn_1x_coco.py'
model = {{_base_.det_faster_heads.sn}}
# SN recipe: the ratio logits take no weight decay.
optim_wrapper = dict(paramwise_cfg={{_base_.sn_paramwise_cfg}})
# DDP does not broadcast buffers: merge the per-GPU SN running statistics
# before every checkpoint and validation (see docs/distributed.md).
custom_hooks = {{_base_.sn_custom_hooks}}
# The SN paper's test statistics: batch averages once training ends
# (../_base_/switchable_norm.py).
default_hooks = {{_base_.sn_default_hooks}}
