# The SN paper's segmentation model (../_base_/seg_fcn-1conv_r50-d8.py: a
# dilated ResNet-50, output stride 8, with a one-conv FCN head and an
# auxiliary one on res4) with SyncBN in backbone and heads, on Cityscapes:
# 8 GPUs x 2 images, 40k iterations, SGD lr 0.01 with poly decay (mmseg's
# schedule).  SN paper Table VII, SyncBN row.  The other normalisers are
# children of this config (../_base_/seg_norms.py).
_base_ = [
    '../_base_/seg_fcn-1conv_r50-d8.py',
    '../_base_/seg_cityscapes-713x713.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py',
]
model = {{_base_.seg_model}}
