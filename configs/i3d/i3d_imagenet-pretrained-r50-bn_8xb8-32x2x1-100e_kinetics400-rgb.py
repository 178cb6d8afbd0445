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
# The SN paper's test (Table X): "standard 10-clip testing that averages
# softmax scores from 10 clips sampled regularly" (the model's cls_head
# averages with average_clips='prob').  mmaction2's recipe tests 3 crops of
# each clip (30 views).  The paper names no crops: we read each clip whole
# at a shorter side of 256, fully convolutionally, as in Non-local
# networks' 10-clip test, from which the I3D baseline the paper follows
# (its ref. [5], the GN paper) comes (our reading, see README.md).  One
# video per batch: frame widths differ.
test_pipeline = [t for t in _base_.test_pipeline if t.type != 'ThreeCrop']
test_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
