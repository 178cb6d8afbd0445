# BN† backbone; SN in FPN and the 4conv-1fc box head, placed
# as GN is in mmdet's gn/ configs (the RPN head has no norm).
_base_ = './faster-rcnn_r50_fpn_1x_coco.py'
model = dict(
    neck=dict(norm_cfg=dict(type='SN')),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            conv_out_channels=256,
            norm_cfg=dict(type='SN'))))
# SN recipe: the ratio logits take no weight decay.
optim_wrapper = dict(paramwise_cfg={{_base_.sn_paramwise_cfg}})
# DDP does not broadcast buffers: merge the per-GPU SN running statistics
# before every checkpoint and validation (see docs/distributed.md).
custom_hooks = {{_base_.sn_custom_hooks}}
