# BN† backbone; GN in FPN and the 4conv-1fc box head, placed
# as in mmdet's gn/ configs (the RPN head has no norm).
_base_ = './faster-rcnn_r50_fpn_1x_coco.py'
model = dict(
    neck=dict(norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            conv_out_channels=256,
            norm_cfg=dict(type='GN', num_groups=32, requires_grad=True))))
