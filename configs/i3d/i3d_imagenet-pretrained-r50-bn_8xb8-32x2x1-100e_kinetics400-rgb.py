# I3D ResNet-50 with BN (the SN paper's video baseline), ImageNet-inflated,
# 32x2x1 clips, 8 GPUs x 8 clips; mmaction2's recipe unchanged apart from
# the backbone type, whose 2-D -> 3-D inflation is exact (see README).
_base_ = [
    'mmaction::recognition/i3d/'
    'i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py',
    '../_base_/switchable_norm.py'
]
# The exact-inflation backbone lives next to its inflation code.
custom_imports = dict(
    imports=['ssn_norm', 'ssn_norm.convert.inflate_i3d'],
    allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='ResNet3dExactInflate',
        norm_cfg=dict(type='BN3d', requires_grad=True)))
