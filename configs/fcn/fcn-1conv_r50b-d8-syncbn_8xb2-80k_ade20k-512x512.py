# DeepLabV3, ResNet-50 D8 with SyncBN in backbone and heads, on ADE20K:
# 8 GPUs x 2 images, 80k iterations, SGD lr 0.01 with poly decay (mmseg's
# schedule).  Backbone: mmseg's 'ResNet' (7x7 stem, 'r50b'), the ResNet-50
# v1 of the SN paper.  SN paper Table VII, SyncBN row.  The other
# normalisers are children of this config (../_base_/seg_norms.py).
_base_ = [
    'mmseg::_base_/models/deeplabv3_r50-d8.py',
    '../_base_/seg_ade20k-512x512.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
]
model = {{_base_.seg_model}}
