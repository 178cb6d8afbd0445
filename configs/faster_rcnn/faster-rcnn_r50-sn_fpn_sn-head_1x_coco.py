# SN backbone + SN head.  The backbone starts from an SN ImageNet ResNet-50
# converted by tools/convert_checkpoint.py (see this folder's README); its
# statistics are trained with the detector (norm_eval=False).
_base_ = './faster-rcnn_r50_fpn_sn-head_1x_coco.py'
model = dict(backbone={{_base_.det_resnet.sn}})
