# GN backbone + GN head (mmdet's "gn-all"), from the GN ImageNet ResNet-50
# that mmdet's contrib GN configs use (pytorch style, RGB input).
_base_ = './faster-rcnn_r50_fpn_gn-head_1x_coco.py'
model = dict(backbone={{_base_.det_resnet.gn}})
