# GN backbone + GN head (mmdet's "gn-all"), from the GN paper's ImageNet
# ResNet-50 (Detectron's, fed its BGR input; ../_base_/det_norms.py).
_base_ = './faster-rcnn_r50_fpn_gn-head_1x_coco.py'
model = {{_base_.det_backbone.gn}}
