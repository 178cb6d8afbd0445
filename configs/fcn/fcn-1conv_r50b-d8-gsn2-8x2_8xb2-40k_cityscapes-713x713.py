# Ours (no paper row): the SN(8,2) config with group SN, two channel groups
# each with its own ratios, in backbone and heads; the backbone starts from
# the SN(8,2) ImageNet model converted with --groups 2 (see the README).
_base_ = './fcn-1conv_r50b-d8-sn-8x2_8xb2-40k_cityscapes-713x713.py'
norm_cfg = {{_base_.seg_norms.gsn2_8x2.norm_cfg}}
model = {{_base_.seg_norms.gsn2_8x2.model}}
