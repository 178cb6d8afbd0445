# SN/SN of Table IV: SN in the backbone and the conv5 head, from an SN
# ImageNet ResNet-50 converted by tools/convert_checkpoint.py (which SN(8,k)
# the paper used is lost from its text; see the README).
_base_ = './faster-rcnn_r50_c4_4xb3-120k_coco.py'
model = {{_base_.det_c4.sn}}
# SN recipe: the ratio logits take no weight decay; per-GPU running
# statistics merged before every checkpoint and validation.
optim_wrapper = dict(paramwise_cfg={{_base_.sn_paramwise_cfg}})
custom_hooks = {{_base_.sn_custom_hooks}}
# The SN paper's test statistics: batch averages once training ends
# (../_base_/switchable_norm.py).
default_hooks = {{_base_.sn_default_hooks}}
