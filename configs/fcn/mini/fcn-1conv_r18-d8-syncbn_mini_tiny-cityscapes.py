# Mini Table VII model (one-conv FCN head) with SyncBN, which mmengine
# reverts to BN on one process (the single-GPU baseline):
# the real config shrunk by _base_/mini_tiny-cityscapes.py (quarter-width
# ResNet-18 D8, 128x128 crops, 150 iterations, one process x 4 images, no
# pretrained weights).  Data: ssn_norm.datasets.tiny_cityscapes.
# make_tiny_cityscapes(root) in data/tiny_cityscapes/, or wherever
# $SSN_TINY_CITYSCAPES points.
_base_ = [
    '../fcn-1conv_r50b-d8-syncbn_8xb2-40k_cityscapes-713x713.py',
    './_base_/mini_tiny-cityscapes.py'
]
# Each entry of ``mini`` replaces the real config's key of that name
# (mmengine runs this file with the merged bases bound to ``_base_``).
globals().update(_base_.mini)
