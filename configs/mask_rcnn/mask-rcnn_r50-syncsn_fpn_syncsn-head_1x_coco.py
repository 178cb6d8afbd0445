# SyncSN backbone + SyncSN head: BN moments over all 8 GPUs x 2 images.
# Running statistics agree across ranks by construction, so no buffer sync.
_base_ = './mask-rcnn_r50_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        norm_cfg=dict(type='SyncSN'),
        norm_eval=False,
        # SyncSN has the parameters and buffers of SN: same checkpoint.
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/resnet50-v1_sn-8x32_in1k.pth')),
    neck=dict(norm_cfg=dict(type='SyncSN')),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            conv_out_channels=256,
            norm_cfg=dict(type='SyncSN')),
        mask_head=dict(norm_cfg=dict(type='SyncSN'))))
optim_wrapper = dict(paramwise_cfg={{_base_.sn_paramwise_cfg}})
