# Mini benchmark-suite version of
# ../i3d_imagenet-pretrained-r50-bn_8xb8-32x2x1-100e_kinetics400-rgb.py.
_base_ = [
    '../i3d_imagenet-pretrained-r50-bn_8xb8-32x2x1-100e_kinetics400-rgb.py',
    './_base_/mini_tiny-kinetics.py'
]
# Each entry of ``mini`` replaces the real config's key of that name
# (mmengine runs this file with the merged bases bound to ``_base_``).
globals().update(_base_.mini)
