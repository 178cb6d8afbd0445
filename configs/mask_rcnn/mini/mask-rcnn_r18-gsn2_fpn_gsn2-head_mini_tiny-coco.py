# Mini benchmark-suite version of ours, group SN (two channel groups):
# ../mask-rcnn_r50-gsn2_fpn_gsn2-head_2x_coco.py
_base_ = [
    '../mask-rcnn_r50-gsn2_fpn_gsn2-head_2x_coco.py',
    './_base_/mini_tiny-coco.py'
]
# Each entry of ``mini`` replaces or merges into the real config's key of
# that name (mmengine runs this file with the merged bases bound to
# ``_base_``), as in the other families' mini configs.
globals().update(_base_.mini)
