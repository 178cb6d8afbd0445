# BN† baseline of the SN paper: upstream's Mask R-CNN R50-FPN with a frozen-BN
# (torchvision) backbone and no norm in FPN or the RoI heads.  Every other
# config of this family inherits it.
_base_ = [
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    '../_base_/switchable_norm.py'
]
model = dict(
    backbone=dict(
        norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True))
