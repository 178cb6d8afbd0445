# BN† backbone; GN in FPN, the 4conv-1fc box head and the mask head
# (placement and norm_cfg in ../_base_/det_norms.py).
_base_ = './mask-rcnn_r50_fpn_1x_coco.py'
model = {{_base_.det_mask_heads.gn}}
