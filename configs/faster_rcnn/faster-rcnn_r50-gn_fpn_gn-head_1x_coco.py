# GN backbone + GN head (mmdet's "gn-all"), from the GN ImageNet ResNet-50
# that mmdet's contrib GN configs use (pytorch style, RGB input).
_base_ = './faster-rcnn_r50_fpn_gn-head_1x_coco.py'
model = dict(
    backbone=dict(
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
        # GN ignores norm_eval (no running statistics); set for the record.
        norm_eval=False,
        init_cfg=dict(
            type='Pretrained', checkpoint='open-mmlab://contrib/resnet50_gn')))
