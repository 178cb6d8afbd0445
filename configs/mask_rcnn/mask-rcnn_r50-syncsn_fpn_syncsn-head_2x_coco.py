_base_ = './mask-rcnn_r50-syncsn_fpn_syncsn-head_1x_coco.py'
# Detectron's 2x: 180k iterations, lr x0.1 after 120k and 160k, the
# schedule of the SN paper's setting-3 (Table VI).
train_cfg = {{_base_.det_2x.train_cfg}}
param_scheduler = {{_base_.det_2x.param_scheduler}}
