# The Table VII model with SN (BN statistics per GPU) in backbone and
# heads, the backbone from the SN ImageNet ResNet-50 v1 trained with 8 GPUs
# x 32 images.  SN paper Table VII, SN(8,32) row; the (8,2) and (8,4) rows
# are children that change only that checkpoint.  Tested with batch-average
# statistics (../_base_/switchable_norm.py).
_base_ = './fcn-1conv_r50b-d8-syncbn_8xb2-40k_cityscapes-713x713.py'
norm_cfg = {{_base_.seg_norms.sn.norm_cfg}}
model = {{_base_.seg_norms.sn.model}}
optim_wrapper = {{_base_.seg_norms.sn.optim_wrapper}}
custom_hooks = {{_base_.seg_norms.sn.custom_hooks}}
default_hooks = {{_base_.seg_norms.sn.default_hooks}}
