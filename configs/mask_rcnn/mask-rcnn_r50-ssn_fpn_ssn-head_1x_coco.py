# SSN backbone + SSN head, trained with the SSN recipe: ratio logits at
# lr x 0.1 without weight decay and their gradient norm clipped to 1.0, and
# the SparsestMax radius grown linearly from 0 to 1 over the run.
_base_ = './mask-rcnn_r50_fpn_1x_coco.py'
model = {{_base_.det_mask_fpn.ssn}}
optim_wrapper = {{_base_.ssn_optim_wrapper}}
custom_hooks = {{_base_.ssn_custom_hooks}}
# The SN paper's test statistics: batch averages once training ends
# (../_base_/switchable_norm.py).
default_hooks = {{_base_.sn_default_hooks}}
