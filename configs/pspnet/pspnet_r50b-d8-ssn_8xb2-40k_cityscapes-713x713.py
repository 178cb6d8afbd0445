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
optim_wrapper = {{_base_.ssn_optim_wrapper}}
custom_hooks = {{_base_.ssn_custom_hooks}}
