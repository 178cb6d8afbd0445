# SSN/SSN beside Table IV (no paper row): SSN in the backbone and the conv5
# head with the SSN recipe (ratio logits at lr x 0.1, no weight decay, their
# gradient norm clipped to 1.0; SparsestMax radius grown from 0 to 1).
_base_ = './faster-rcnn_r50_c4_4xb3-120k_coco.py'
model = {{_base_.det_c4.ssn}}
optim_wrapper = {{_base_.ssn_optim_wrapper}}
custom_hooks = {{_base_.ssn_custom_hooks}}
# The SN paper's test statistics: batch averages once training ends
# (../_base_/switchable_norm.py).
default_hooks = {{_base_.sn_default_hooks}}
