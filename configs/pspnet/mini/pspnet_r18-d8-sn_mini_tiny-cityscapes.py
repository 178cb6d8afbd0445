# Mini PSPNet with SN: the real SN(8,32) config shrunk by the Table VII
# minis' _base_/mini_tiny-cityscapes.py (quarter-width ResNet-18 D8, 128x128
# crops, 150 iterations, one process x 4 images, no pretrained weights).
# The pool scales stay (1, 2, 3, 6): the scale-1 branch still normalises
# 1x1 maps.  Data: as the Table VII minis (../../fcn/README.md).
_base_ = [
    '../pspnet_r50b-d8-sn-8x32_8xb2-40k_cityscapes-713x713.py',
    '../../fcn/mini/_base_/mini_tiny-cityscapes.py'
]
# Each entry of ``mini`` replaces the real config's key of that name
# (mmengine runs this file with the merged bases bound to ``_base_``).
globals().update(_base_.mini)
model = {{_base_.mini_pspnet_model}}
