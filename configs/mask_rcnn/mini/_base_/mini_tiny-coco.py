# The shrink shared by the mini Mask R-CNN configs: a narrow ResNet-18 from
# scratch, 64-channel FPN and heads, 128 px images of the generated tiny COCO
# set (ssn_norm.datasets.tiny_coco) and a short schedule.
#
# Each mini config inherits a real config *and* this file, and this file may
# only add names the real configs lack (mmengine refuses duplicate keys among
# bases), so everything lives in the one dict ``mini`` and the mini configs
# copy its entries out with ``globals().update(_base_.mini)``.  The helper
# names below are deleted at the end so they do not show up in the configs.
_data_root = 'data/tiny_coco/'
_classes = ('square', 'disc', 'triangle')  # ssn_norm.datasets.tiny_coco
_channels = 64
_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]


def _loader(split, pipeline):
    # The loaders of the tiny set: 4 images a batch, no worker processes.
    return dict(
        batch_size=4,
        num_workers=0,
        persistent_workers=False,
        dataset=dict(
            data_root=_data_root,
            metainfo=dict(classes=_classes),
            ann_file=f'annotations/instances_{split}2017.json',
            data_prefix=dict(img=f'{split}2017/'),
            pipeline=pipeline))


_val_dataloader = _loader('val', _test_pipeline)
_evaluator = dict(ann_file=_data_root + 'annotations/instances_val2017.json')
# 96 training images (make_tiny_coco's default) in batches of 4: 24
# iterations per epoch, 96 in all, then one evaluation on the 24 val images.
_max_epochs = 4

mini = dict(
    data_root=_data_root,
    train_pipeline=_train_pipeline,
    test_pipeline=_test_pipeline,
    model=dict(
        # Every mini normalises its input alike, with torchvision's RGB
        # statistics (the GN parents feed the GN paper's ImageNet model its
        # BGR input; the minis train from scratch).
        data_preprocessor=dict(
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
            bgr_to_rgb=True),
        backbone=dict(
            depth=18, base_channels=32, frozen_stages=-1, init_cfg=None),
        neck=dict(in_channels=[32, 64, 128, 256], out_channels=_channels),
        rpn_head=dict(in_channels=_channels, feat_channels=_channels),
        roi_head=dict(
            # One sample per bin: the objects are 7-14 feature pixels across
            # at stride 4, so a 7x7 (14x14 mask) bin is about a pixel and one
            # bilinear sample reads it.  mmcv's CPU RoIAlign was a quarter of
            # a run's time with a 2x2 grid (the adaptive default: more).
            bbox_roi_extractor=dict(
                roi_layer=dict(sampling_ratio=1), out_channels=_channels),
            bbox_head=dict(
                in_channels=_channels,
                conv_out_channels=_channels,
                fc_out_channels=256,
                num_classes=len(_classes)),
            mask_roi_extractor=dict(
                roi_layer=dict(sampling_ratio=1), out_channels=_channels),
            mask_head=dict(
                in_channels=_channels,
                conv_out_channels=_channels,
                num_classes=len(_classes))),
        train_cfg=dict(
            rpn_proposal=dict(nms_pre=500, max_per_img=200),
            rcnn=dict(sampler=dict(num=64))),
        test_cfg=dict(
            rpn=dict(nms_pre=300, max_per_img=100),
            # Keep every detection: a model this short-trained may score
            # all boxes under the usual 0.05, and COCOeval cannot score an
            # empty result set (mmdet then reports no metric at all).
            rcnn=dict(score_thr=0.0, max_per_img=50))),
    train_dataloader=_loader('train', _train_pipeline),
    val_dataloader=_val_dataloader,
    test_dataloader=_val_dataloader,
    val_evaluator=_evaluator,
    test_evaluator=_evaluator,
    # Epochs, not the parents' Detectron iterations: _delete_ replaces their
    # IterBasedTrainLoop, and checkpoints and logs count epochs again.
    train_cfg=dict(
        _delete_=True,
        type='EpochBasedTrainLoop',
        max_epochs=_max_epochs,
        val_interval=_max_epochs),
    param_scheduler=[
        dict(
            type='LinearLR',
            start_factor=0.01,
            by_epoch=False,
            begin=0,
            end=50),
        dict(
            type='MultiStepLR',
            begin=0,
            end=_max_epochs,
            by_epoch=True,
            milestones=[3],
            gamma=0.1)
    ],
    # From scratch, and the frozen-BN baseline has no working normaliser at
    # all: clip the gradient so an early spike cannot derail the short run.
    optim_wrapper=dict(clip_grad=dict(max_norm=10.0)),
    default_hooks=dict(
        logger=dict(interval=10),
        checkpoint=dict(by_epoch=True, interval=_max_epochs)),
    log_processor=dict(by_epoch=True, window_size=10))
del _data_root, _classes, _channels, _train_pipeline, _test_pipeline
del _val_dataloader, _evaluator, _max_epochs, _loader
# A fixed seed, as in the tiny Cityscapes base: mini results repeat run to run.
randomness = dict(seed=0)
