# PSPNet R50b-D8 with SSN (SparsestMax ratios) in backbone and heads,
# backbone from the SSN ImageNet ResNet-50 v1 (8 GPUs x 32 images); the SSN
# recipe (../_base_/seg_norms.py).  No row in the SN paper.
_base_ = './pspnet_r50b-d8-syncbn_8xb2-40k_cityscapes-713x713.py'
norm_cfg = {{_base_.seg_norms.ssn.norm_cfg}}
model = {{_base_.seg_norms.ssn.model}}
optim_wrapper = {{_base_.seg_norms.ssn.optim_wrapper}}
custom_hooks = {{_base_.seg_norms.ssn.custom_hooks}}
default_hooks = {{_base_.seg_norms.ssn.default_hooks}}
