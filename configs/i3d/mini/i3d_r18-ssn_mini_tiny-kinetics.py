# Mini benchmark-suite version of
# ../i3d_imagenet-pretrained-r50-ssn_8xb8-32x2x1-100e_kinetics400-rgb.py.
_base_ = [
    '../i3d_imagenet-pretrained-r50-ssn_8xb8-32x2x1-100e_kinetics400-rgb.py',
    './_base_/mini_tiny-kinetics.py'
]
model = {{_base_.mini.model}}
data_root = {{_base_.mini.data_root}}
train_pipeline = {{_base_.mini.train_pipeline}}
val_pipeline = {{_base_.mini.val_pipeline}}
test_pipeline = {{_base_.mini.test_pipeline}}
train_dataloader = {{_base_.mini.train_dataloader}}
val_dataloader = {{_base_.mini.val_dataloader}}
test_dataloader = {{_base_.mini.test_dataloader}}
train_cfg = {{_base_.mini.train_cfg}}
param_scheduler = {{_base_.mini.param_scheduler}}
optim_wrapper = {{_base_.mini.optim_wrapper}}
default_hooks = {{_base_.mini.default_hooks}}
log_processor = {{_base_.mini.log_processor}}
