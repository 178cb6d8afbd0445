# GN/GN of Table IV: GN in the backbone and the conv5 head, from the GN
# ImageNet ResNet-50 of mmdet's contrib GN configs (pytorch style, RGB).
_base_ = './faster-rcnn_r50_c4_4xb3-120k_coco.py'
model = {{_base_.det_c4.gn}}
