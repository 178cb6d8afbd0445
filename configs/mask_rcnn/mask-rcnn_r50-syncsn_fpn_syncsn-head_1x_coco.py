# SyncSN backbone + SyncSN head: BN moments over all 8 GPUs x 2 images.
# SyncSN has SN's parameters (same checkpoint, same recipe), and its running
# statistics agree across ranks by construction: no SyncNormStatsHook.
_base_ = './mask-rcnn_r50_fpn_1x_coco.py'
model = {{_base_.det_mask_fpn.syncsn}}
optim_wrapper = dict(paramwise_cfg={{_base_.sn_paramwise_cfg}})
# The SN paper's test statistics: batch averages once training ends
# (../_base_/switchable_norm.py).
default_hooks = {{_base_.sn_default_hooks}}
