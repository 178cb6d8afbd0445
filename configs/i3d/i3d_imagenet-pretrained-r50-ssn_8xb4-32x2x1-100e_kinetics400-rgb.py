# As the 8 x 8 config with 4 clips per GPU (32 in all); lr scaled linearly.
_base_ = [
    './i3d_imagenet-pretrained-r50-ssn_8xb8-32x2x1-100e_kinetics400-rgb.py'
]
train_dataloader = dict(batch_size=4)
optim_wrapper = dict(optimizer=dict(lr=0.005))
auto_scale_lr = dict(base_batch_size=32)
