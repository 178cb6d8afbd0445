# Mini DeepLabV3 with SSN: the real SSN config (recipe and radius hook)
# shrunk by _base_/tiny_cityscapes.py (quarter-width ResNet-18 D8, 128x128
# crops, 150 iterations, one process x 4 images, no pretrained weights).
# Data: ssn_norm.datasets.tiny_cityscapes.make_tiny_cityscapes(root) in
# data/tiny_cityscapes/, or wherever $SSN_TINY_CITYSCAPES points.
_base_ = [
    '../deeplabv3_r50b-d8-ssn_8xb2-40k_cityscapes-769x769.py',
    './_base_/tiny_cityscapes.py'
]
# Top-level names too, so the dumped config reads consistently.
data_root = {{_base_.tiny_data_root}}
crop_size = {{_base_.tiny_crop_size}}
train_pipeline = {{_base_.tiny_train_pipeline}}
test_pipeline = {{_base_.tiny_test_pipeline}}
model = dict(
    data_preprocessor=dict(size={{_base_.tiny_crop_size}}),
    backbone={{_base_.tiny_backbone}},
    # ASPP dilations scaled to the 16x16 feature map of a 128x128 crop.
    decode_head=dict(in_channels=128, channels=32, dilations=(1, 2, 4, 6)),
    auxiliary_head=dict(in_channels=64, channels=16),
    test_cfg={{_base_.tiny_test_cfg}})
train_dataloader = {{_base_.tiny_train_dataloader}}
val_dataloader = {{_base_.tiny_test_dataloader}}
test_dataloader = {{_base_.tiny_test_dataloader}}
train_cfg = {{_base_.tiny_train_cfg}}
optim_wrapper = {{_base_.tiny_optim_wrapper}}
param_scheduler = {{_base_.tiny_param_scheduler}}
default_hooks = {{_base_.tiny_default_hooks}}
