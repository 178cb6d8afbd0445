# BN† backbone; GN in FPN and the 4conv-1fc box head
# (placement and norm_cfg in ../_base_/det_norms.py).
_base_ = './faster-rcnn_r50_fpn_1x_coco.py'
model = {{_base_.det_faster_heads.gn}}
