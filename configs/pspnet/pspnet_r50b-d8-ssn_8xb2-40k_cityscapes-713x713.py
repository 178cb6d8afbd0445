# PSPNet R50b-D8 with SSN; backbone from an SSN ImageNet ResNet-50 v1
# converted by tools/convert_checkpoint.py; SSN recipe (ratio logits
# lr x 0.1, no decay, clipped; radius 0 -> 1 over training).
_base_ = [
    './pspnet_r50b-d8-syncbn_8xb2-40k_cityscapes-713x713.py',
    '../_base_/switchable_norm.py'
]
ssn_checkpoint = 'checkpoints/resnet50-v1_ssn-8x32_in1k.pth'
norm_cfg = dict(type='SSN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg, init_cfg=dict(checkpoint=ssn_checkpoint)),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
optim_wrapper = dict(
    type='RatioClipOptimWrapper',
    constructor='SwitchableOptimWrapperConstructor',
    ratio_clip_grad=dict(max_norm=1.0),
    paramwise_cfg={{_base_.ssn_paramwise_cfg}})
custom_hooks = [
    dict(type='SparsestMaxRadiusHook'),
    # DDP does not broadcast buffers: merge the per-GPU running statistics.
    dict(type='SyncNormStatsHook')
]
