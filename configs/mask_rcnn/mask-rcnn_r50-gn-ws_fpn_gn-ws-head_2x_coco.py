# GN+WS beside Table VI: mmdet's gn+ws "gn-ws-all" Mask R-CNN (GN with
# weight-standardised convs in the backbone, every FPN conv, the 4conv-1fc
# box head and the mask head, from the GN+WS ImageNet ResNet-50), the
# strongest normaliser alternative to SN, which the SN paper does not run.
# mmdet's own model-zoo numbers are this config's metafile Reference (24
# epochs); the schedule here is the Detectron 2x in iterations of the
# table's other rows.  (mask_rcnn/..: mmengine refuses the "+" of a
# `pkg::gn+ws/...` base; see the Faster R-CNN GN+WS config.)
_base_ = [
    'mmdet::mask_rcnn/../gn+ws/mask-rcnn_r50_fpn_gn-ws-all_2x_coco.py',
    '../_base_/switchable_norm.py', '../_base_/schedules/det_iter_schedules.py'
]
model = dict(backbone=dict(norm_eval=False))  # GN trains (see faster 1x)
train_cfg = {{_base_.det_2x.train_cfg}}
param_scheduler = {{_base_.det_2x.param_scheduler}}
default_hooks = {{_base_.det_iter_hooks}}
log_processor = {{_base_.det_iter_log}}
# No weight decay on the norm layers' weight and bias, as in every detection
# setting of the SN paper (../_base_/switchable_norm.py).
optim_wrapper = {{_base_.det_optim_wrapper}}
