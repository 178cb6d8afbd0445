_base_ = './faster-rcnn_r50_fpn_sn-head_1x_coco.py'
# Detectron's 2x: 180k iterations, lr x0.1 after 120k and 160k.  No paper
# row: the paper ran Faster R-CNN + FPN on 1x (Table V); 2x is the schedule
# of the released re-implementation (see the README).
train_cfg = {{_base_.det_2x.train_cfg}}
param_scheduler = {{_base_.det_2x.param_scheduler}}
