# How to train an SN config on your own Cityscapes-layout folder: a child
# that overrides only dataset paths and pipeline (here of the mini SN config;
# the same lines work under any Cityscapes config of this directory).
# Expected layout under data_root (paths relative to where you run):
#   leftImg8bit/{train,val}/<city>/*_leftImg8bit.png
#   gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png
_base_ = './fcn-1conv_r18-d8-sn_mini_tiny-cityscapes.py'
data_root = 'data/my_cityscapes/'
# Images of 320x160 here; resize to that scale, crop 128x128.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(
        type='RandomResize',
        scale=(320, 160),
        ratio_range=(0.5, 1.0),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=(128, 128), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(320, 160), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
# The inherited dataloaders were bound to the old root and pipelines when
# they were defined: a top-level data_root alone would change nothing, so
# set both in each dataloader.
train_dataloader = dict(
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
