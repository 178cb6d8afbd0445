# GN backbone (from the GN ImageNet ResNet-50) + SN head.
_base_ = './mask-rcnn_r50_fpn_sn-head_1x_coco.py'
model = dict(backbone={{_base_.det_resnet.gn}})
