# Mini benchmark-suite version of ../mask-rcnn_r50-gn_fpn_gn-head_1x_coco.py.
_base_ = [
    '../mask-rcnn_r50-gn_fpn_gn-head_1x_coco.py', './_base_/mini_tiny-coco.py'
]
model = {{_base_.mini.model}}
data_root = {{_base_.mini.data_root}}
train_pipeline = {{_base_.mini.train_pipeline}}
test_pipeline = {{_base_.mini.test_pipeline}}
train_dataloader = {{_base_.mini.train_dataloader}}
val_dataloader = {{_base_.mini.val_dataloader}}
test_dataloader = {{_base_.mini.test_dataloader}}
val_evaluator = {{_base_.mini.val_evaluator}}
test_evaluator = {{_base_.mini.test_evaluator}}
train_cfg = {{_base_.mini.train_cfg}}
param_scheduler = {{_base_.mini.param_scheduler}}
optim_wrapper = {{_base_.mini.optim_wrapper}}
default_hooks = {{_base_.mini.default_hooks}}
log_processor = {{_base_.mini.log_processor}}
