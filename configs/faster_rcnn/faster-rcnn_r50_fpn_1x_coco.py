# BN† backbone, no head norm: the baseline (BN†/–) of Table V, the SN
# paper's setting-2.  Upstream's Faster R-CNN R50-FPN on Detectron's 1x
# iteration schedule; every other FPN config of this family inherits it.
_base_ = [
    'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    '../_base_/switchable_norm.py',
    '../_base_/schedules/det_iter_schedules.py', '../_base_/det_norms.py'
]
# BN† is "a constant linear transformation layer" (the paper, 4.2), as
# Detectron's AffineChannel: ImageNet statistics (norm_eval) and affine
# parameters (requires_grad=False) both stay as loaded.
model = dict(
    backbone=dict(
        norm_cfg=dict(type='BN', requires_grad=False), norm_eval=True))
# Detectron's 1x: lr 0.02, x0.1 after 60k and 80k, 90k iterations.
train_cfg = {{_base_.det_1x.train_cfg}}
param_scheduler = {{_base_.det_1x.param_scheduler}}
default_hooks = {{_base_.det_iter_hooks}}
log_processor = {{_base_.det_iter_log}}
# No weight decay on the norm layers' weight and bias, as in every detection
# setting of the SN paper (../_base_/switchable_norm.py).
optim_wrapper = {{_base_.det_optim_wrapper}}
