# SSN backbone + SSN head, trained with the SSN recipe: ratio logits at
# lr x 0.1 without weight decay and their gradient norm clipped to 1.0, and
# the SparsestMax radius grown linearly from 0 to 1 over the run.
_base_ = './faster-rcnn_r50_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        norm_cfg=dict(type='SSN'),
        norm_eval=False,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/resnet50-v1_ssn-8x32_in1k.pth')),
    neck=dict(norm_cfg=dict(type='SSN')),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            conv_out_channels=256,
            norm_cfg=dict(type='SSN'))))
optim_wrapper = {{_base_.ssn_optim_wrapper}}
custom_hooks = {{_base_.ssn_custom_hooks}}
