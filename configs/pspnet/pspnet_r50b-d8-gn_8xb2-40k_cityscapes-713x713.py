# PSPNet R50b-D8 with GN (32 groups); backbone from the GN ImageNet
# ResNet-50 (7x7 stem).  SN paper Table VIII, GN row.
_base_ = './pspnet_r50b-d8-syncbn_8xb2-40k_cityscapes-713x713.py'
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(
        norm_cfg=norm_cfg,
        init_cfg=dict(checkpoint='open-mmlab://contrib/resnet50_gn')),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
