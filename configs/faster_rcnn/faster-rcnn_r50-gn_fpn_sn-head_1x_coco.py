# GN backbone (from the GN paper's ImageNet ResNet-50) + SN head.
_base_ = './faster-rcnn_r50_fpn_sn-head_1x_coco.py'
model = {{_base_.det_backbone.gn}}
