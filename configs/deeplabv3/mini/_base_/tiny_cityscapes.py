# Shared shrink of the segmentation mini configs: a quarter-width ResNet-18 D8
# on 128x128 crops of tiny Cityscapes-layout scenes (256x128, made by
# ssn_norm.datasets.tiny_cityscapes), one process x 4 images, 150 iterations,
# no pretrained weights.
# A mini config inherits a real config and this file.  mmengine forbids keys
# that two bases both define, so everything that replaces a key of the real
# config is named tiny_* here and applied by the mini config with
# {{_base_.tiny_*}}; keys the real configs lack (randomness) act directly.
tiny_data_root = '{{$SSN_TINY_CITYSCAPES:data/tiny_cityscapes/}}'
tiny_crop_size = (128, 128)
tiny_iters = 150
# Stage widths 16, 32, 64, 128 (the heads read the last two).
tiny_backbone = dict(
    depth=18, stem_channels=16, base_channels=16, init_cfg=None)
# GN minis: 16 groups, as the 16-channel first stage admits no 32.
tiny_gn_norm_cfg = dict(num_groups=16)
tiny_gn_backbone = dict(tiny_backbone, norm_cfg=tiny_gn_norm_cfg)
tiny_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(
        type='RandomResize',
        scale=(256, 128),
        ratio_range=(0.75, 1.5),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=tiny_crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
tiny_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
# No worker processes: on a small CPU machine they only add start-up time.
tiny_train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=tiny_data_root, pipeline=tiny_train_pipeline))
tiny_test_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=tiny_data_root, pipeline=tiny_test_pipeline))
tiny_test_cfg = dict(mode='slide', crop_size=tiny_crop_size, stride=(85, 85))
tiny_train_cfg = dict(max_iters=tiny_iters, val_interval=tiny_iters)
tiny_optim_wrapper = dict(optimizer=dict(lr=0.05))
tiny_param_scheduler = [
    dict(
        type='PolyLR',
        eta_min=1e-4,
        power=0.9,
        begin=0,
        end=tiny_iters,
        by_epoch=False)
]
tiny_default_hooks = dict(
    logger=dict(interval=10), checkpoint=dict(interval=tiny_iters))
randomness = dict(seed=0)
