# PSPNet R50b-D8 with SyncSN (BN statistics over all GPUs) in backbone and
# heads, backbone from the SN ImageNet ResNet-50 v1 trained with 8 GPUs x 32
# images.  SN paper Table VIII, SyncSN(8,32) row; the (8,2) and (8,4) rows are
# children that change only that checkpoint.
_base_ = './pspnet_r50b-d8-syncbn_8xb2-40k_cityscapes-713x713.py'
norm_cfg = {{_base_.seg_norms.syncsn.norm_cfg}}
model = {{_base_.seg_norms.syncsn.model}}
optim_wrapper = {{_base_.seg_norms.syncsn.optim_wrapper}}
custom_hooks = {{_base_.seg_norms.syncsn.custom_hooks}}
default_hooks = {{_base_.seg_norms.syncsn.default_hooks}}
