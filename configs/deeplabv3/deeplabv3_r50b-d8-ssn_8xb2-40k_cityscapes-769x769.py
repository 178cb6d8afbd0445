# DeepLabV3 R50b-D8 with SSN (SparsestMax ratios) in backbone and heads,
# backbone from an SSN ImageNet ResNet-50 v1 converted by
# tools/convert_checkpoint.py.  SSN recipe: ratio logits with lr x 0.1, no
# weight decay, gradient norm clipped to 1; the SparsestMax radius grows
# linearly to 1 over training, so every layer ends with one normaliser.
_base_ = [
    './deeplabv3_r50b-d8-syncbn_8xb2-40k_cityscapes-769x769.py',
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
