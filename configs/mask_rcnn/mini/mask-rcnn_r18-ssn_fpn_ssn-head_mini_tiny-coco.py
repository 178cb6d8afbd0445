# Mini benchmark-suite version of ../mask-rcnn_r50-ssn_fpn_ssn-head_1x_coco.py.
_base_ = [
    '../mask-rcnn_r50-ssn_fpn_ssn-head_1x_coco.py',
    './_base_/mini_tiny-coco.py'
]
# Each entry of ``mini`` replaces or merges into the real config's key of
# that name (mmengine runs this file with the merged bases bound to
# ``_base_``), as in the other families' mini configs.
globals().update(_base_.mini)
# The batch-average test statistics from 4 training batches (16 of the 96
# images) instead of the loader's 24: enough for the tiny set, and the mini
# suite keeps its time.
default_hooks = dict(
    _base_.mini.default_hooks, batch_stats=dict(num_batches=4))
