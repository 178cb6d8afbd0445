# The shrink shared by the mini I3D configs: a narrow two-stage I3D ResNet-18
# from scratch on 8-frame 32 x 32 clips of the generated tiny Kinetics set
# (ssn_norm.datasets.tiny_kinetics: four motion directions) and a short
# schedule.
#
# Each mini config inherits a real config *and* this file; mmengine refuses
# duplicate keys among bases, so everything lives in the one dict ``mini``,
# whose every entry replaces (merges into) the real config's key of that
# name: the mini config applies them all with
# ``globals().update(_base_.mini)`` (the GN one then takes
# ``mini_gn_model``).
# No Flip: a horizontal flip turns "left" into "right".
_data_root = 'data/tiny_kinetics/'
_channels = 16
_train_pipeline = [
    dict(type='DecordInit', io_backend='disk'),
    dict(type='SampleFrames', clip_len=8, frame_interval=2, num_clips=1),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 40)),
    dict(type='RandomCrop', size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
_val_pipeline = [
    dict(type='DecordInit', io_backend='disk'),
    dict(
        type='SampleFrames',
        clip_len=8,
        frame_interval=2,
        num_clips=1,
        test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 40)),
    dict(type='CenterCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
# Multi-clip testing as in the real configs, with 2 clips instead of 10.
_test_pipeline = [
    dict(step, num_clips=2) if step['type'] == 'SampleFrames' else step
    for step in _val_pipeline
]
_val_dataset = dict(
    data_root=_data_root,
    ann_file='kinetics400_val_list_videos.txt',
    data_prefix=dict(video='videos_val'),
    test_mode=True)
_max_epochs = 6
_backbone = dict(
    pretrained=None,
    depth=18,
    num_stages=2,
    stage_blocks=(1, 1),
    out_indices=(1, ),
    base_channels=_channels,
    spatial_strides=(1, 2),
    temporal_strides=(1, 1),
    dilations=(1, 1),
    conv1_kernel=(3, 7, 7),
    conv1_stride_t=1,
    pool1_stride_t=1,
    inflate=(1, 1))

_model = dict(
    backbone=_backbone,
    cls_head=dict(num_classes=4, in_channels=2 * _channels, dropout_ratio=0.2),
    # Plain RGB statistics for every normaliser (the GN config's are those of
    # its caffe-style ImageNet model).
    data_preprocessor=dict(
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        to_rgb=False))

mini = dict(
    data_root=_data_root,
    train_pipeline=_train_pipeline,
    val_pipeline=_val_pipeline,
    test_pipeline=_test_pipeline,
    model=_model,
    train_dataloader=dict(
        batch_size=8,
        num_workers=0,
        persistent_workers=False,
        dataset=dict(
            data_root=_data_root,
            ann_file='kinetics400_train_list_videos.txt',
            data_prefix=dict(video='videos_train'),
            pipeline=_train_pipeline)),
    val_dataloader=dict(
        batch_size=8,
        num_workers=0,
        persistent_workers=False,
        dataset=dict(_val_dataset, pipeline=_val_pipeline)),
    test_dataloader=dict(
        batch_size=8,
        num_workers=0,
        persistent_workers=False,
        dataset=dict(_val_dataset, pipeline=_test_pipeline)),
    train_cfg=dict(max_epochs=_max_epochs, val_begin=_max_epochs),
    param_scheduler=[
        dict(
            type='CosineAnnealingLR',
            T_max=_max_epochs,
            eta_min=0,
            by_epoch=True,
            begin=0,
            end=_max_epochs)
    ],
    optim_wrapper=dict(optimizer=dict(lr=0.1, weight_decay=1e-4)),
    default_hooks=dict(
        logger=dict(interval=8),
        checkpoint=dict(
            interval=_max_epochs, save_best=None, max_keep_ckpts=1)),
    log_processor=dict(window_size=8))
# The GN config's model: GN(32) needs >= 32 channels; use 4 groups.
mini_gn_model = dict(
    _model,
    backbone=dict(
        _backbone, norm_cfg=dict(type='GN', num_groups=4, requires_grad=True)))
del _data_root, _channels, _train_pipeline, _val_pipeline, _test_pipeline
del _val_dataset, _max_epochs, _backbone, _model
# A fixed seed, as in the segmentation mini base: results repeat run to run.
randomness = dict(seed=0)
