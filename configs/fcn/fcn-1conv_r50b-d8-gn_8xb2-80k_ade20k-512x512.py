# The Table VII model with GN (32 groups) in backbone and heads, the
# backbone from the GN paper's ImageNet ResNet-50 (Detectron's, fed its BGR
# input; ../_base_/seg_norms.py).  SN paper Table VII, GN row.
_base_ = './fcn-1conv_r50b-d8-syncbn_8xb2-80k_ade20k-512x512.py'
norm_cfg = {{_base_.seg_norms.gn.norm_cfg}}
model = {{_base_.seg_norms.gn.model}}
