# The shrink shared by the segmentation mini configs (Table VII's one-conv
# FCN model, and PSPNet):
# a quarter-width ResNet-18 D8 from scratch on 128x128 crops of the tiny
# Cityscapes-layout scenes (256x128, made by ssn_norm.datasets.
# tiny_cityscapes), one process x 4 images, 150 iterations.
#
# A mini config inherits a real config *and* this file.  mmengine refuses
# keys that two bases both define, so the shrink lives in the one dict
# ``mini``, whose every entry replaces (merges into) the real config's key
# of that name: the mini config applies them all with
# ``globals().update(_base_.mini)``.  The helper names are deleted at the
# end so they do not show up in the configs.
_data_root = '{{$SSN_TINY_CITYSCAPES:data/tiny_cityscapes/}}'
_crop_size = (128, 128)
_iters = 150
_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(
        type='RandomResize',
        scale=(256, 128),
        ratio_range=(0.75, 1.5),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=_crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
# The real Cityscapes configs' switch (../../../_base_/seg_cityscapes-
# 713x713.py): the test split has no labels to load.
_labels = [dict(type='LoadAnnotations')]
if '{{$SSN_CITYSCAPES_TEST_SPLIT:val}}' == 'test':
    _labels = []
_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True), *_labels,
    dict(type='PackSegInputs')
]
# No worker processes: on a small CPU machine they only add start-up time.
_loader = dict(num_workers=0, persistent_workers=False)
_test_dataloader = dict(
    _loader,
    batch_size=1,
    dataset=dict(data_root=_data_root, pipeline=_test_pipeline))
# Stage widths 16, 32, 64, 128 (the heads read the last two); the heads'
# widths shrunk in proportion: the one-conv head's 2048 -> 512 and its
# auxiliary's 1024 -> 512 (Table VII) become 128 -> 32 and 64 -> 32.
# Every mini normalises its input alike, with torchvision's RGB statistics
# (the GN parents feed the GN paper's ImageNet model its BGR input; the
# minis train from scratch).
_model = dict(
    data_preprocessor=dict(
        size=_crop_size,
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True),
    backbone=dict(depth=18, stem_channels=16, base_channels=16, init_cfg=None),
    decode_head=dict(in_channels=128, channels=32),
    auxiliary_head=dict(in_channels=64, channels=32),
    test_cfg=dict(mode='slide', crop_size=_crop_size, stride=(85, 85)))
mini = dict(
    # Top-level names too, so the dumped config reads consistently.
    data_root=_data_root,
    crop_size=_crop_size,
    train_pipeline=_train_pipeline,
    test_pipeline=_test_pipeline,
    model=_model,
    train_dataloader=dict(
        _loader,
        batch_size=4,
        dataset=dict(data_root=_data_root, pipeline=_train_pipeline)),
    val_dataloader=_test_dataloader,
    test_dataloader=_test_dataloader,
    train_cfg=dict(max_iters=_iters, val_interval=_iters),
    optim_wrapper=dict(optimizer=dict(lr=0.05)),
    param_scheduler=[
        dict(
            type='PolyLR',
            eta_min=1e-4,
            power=0.9,
            begin=0,
            end=_iters,
            by_epoch=False)
    ],
    default_hooks=dict(
        logger=dict(interval=10), checkpoint=dict(interval=_iters)))
# GN minis: 16 groups, as the 16-channel first stage admits no 32.
_gn = dict(num_groups=16)
mini_gn_model = dict(
    _model,
    backbone=dict(_model['backbone'], norm_cfg=_gn),
    decode_head=dict(_model['decode_head'], norm_cfg=_gn),
    auxiliary_head=dict(_model['auxiliary_head'], norm_cfg=_gn))
# PSPNet: the same, with the PSP head's pool scales (1, 2, 3, 6) kept, so
# the scale-1 branch still normalises 1x1 maps, and mmseg's auxiliary head
# (1024 -> 256) shrunk to 64 -> 16.
mini_pspnet_model = dict(
    _model, auxiliary_head=dict(in_channels=64, channels=16))
del _data_root, _crop_size, _iters, _train_pipeline, _labels, _test_pipeline
del _loader, _test_dataloader, _model, _gn
# A fixed seed: mini results repeat run to run.
randomness = dict(seed=0)
