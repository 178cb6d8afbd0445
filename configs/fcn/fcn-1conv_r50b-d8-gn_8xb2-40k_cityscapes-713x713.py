# DeepLabV3 R50b-D8 with GN (32 groups) in backbone and heads, backbone
# from the GN ImageNet ResNet-50.  SN paper Table VII, GN row.
_base_ = './deeplabv3_r50b-d8-syncbn_8xb2-40k_cityscapes-713x713.py'
norm_cfg = {{_base_.seg_norms.gn.norm_cfg}}
model = {{_base_.seg_norms.gn.model}}
