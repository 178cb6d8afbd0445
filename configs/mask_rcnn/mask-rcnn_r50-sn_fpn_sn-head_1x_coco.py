# SN backbone + SN head.  The backbone starts from an SN ImageNet ResNet-50
# converted by tools/convert_checkpoint.py (see this folder's README).
_base_ = './mask-rcnn_r50_fpn_sn-head_1x_coco.py'
model = dict(
    backbone=dict(
        norm_cfg=dict(type='SN'),
        # SN is no _BatchNorm, so norm_eval=True would not freeze it anyway;
        # its statistics are trained with the detector, as in the paper.
        norm_eval=False,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/resnet50-v1_sn-8x32_in1k.pth')))
