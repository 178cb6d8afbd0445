# Cityscapes for the SN paper's segmentation rows (Tables VII and VIII):
# 713x713 random crops ("large input image size 713x713"; PSPNet's crop) of
# images rescaled from 2048x1024 by x0.5 - x2.0, 2 images per GPU, and a
# sliding-window test of the full 2048x1024 image with 713x713 windows at
# stride 476 (2/3 of the window, as mmseg's 769x769 configs slide at 513).
# ``seg_model`` holds what the configs change in mmseg's model bases
# (``model = {{_base_.seg_model}}``).
_base_ = [
    'mmseg::_base_/datasets/cityscapes.py', './seg_norms.py',
    './seg_ms_test.py'
]
crop_size = (713, 713)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(
        type='RandomResize',
        scale=(2048, 1024),
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
# mmseg's dataloader bound its pipeline when it was defined: replace it.
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
# Odd crops: align_corners=True, as in mmseg's 769x769 configs.
seg_model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone={{_base_.seg_r50b_backbone}},
    decode_head=dict(align_corners=True),
    auxiliary_head=dict(align_corners=True),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(476, 476)))

# Which split ``tools/test.py`` runs, from $SSN_CITYSCAPES_TEST_SPLIT:
# - 'val' (default): gtFine/val labels, mIoU (Table VIII's split);
# - 'test': the unlabelled leftImg8bit/test images (Table VII's Cityscapes
#   split).  mmseg's CityscapesMetric(format_only=True) writes one
#   <image>_leftImg8bit.png of Cityscapes label ids per image to
#   ``test_evaluator.output_dir`` (``cityscapes_submission_dir`` unless set
#   with --cfg-options) for the benchmark server; it needs
#   ``pip install cityscapesscripts`` and computes no metric.
# Training and its validation always use train and val.
cityscapes_test_split = '{{$SSN_CITYSCAPES_TEST_SPLIT:val}}'
cityscapes_submission_dir = 'work_dirs/cityscapes_test_submission'
if cityscapes_test_split not in ('val', 'test'):
    raise ValueError(
        f'SSN_CITYSCAPES_TEST_SPLIT={cityscapes_test_split!r}: expected '
        "'val' (labelled, mIoU) or 'test' (submission files), or unset")
if cityscapes_test_split == 'test':
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
        dict(type='PackSegInputs')
    ]
    test_dataloader = dict(
        dataset=dict(
            data_prefix=dict(
                img_path='leftImg8bit/test', seg_map_path='gtFine/test'),
            pipeline=test_pipeline))
    test_evaluator = dict(
        _delete_=True,
        type='CityscapesMetric',
        format_only=True,
        keep_results=True,
        output_dir=cityscapes_submission_dir)
    tta_pipeline = {{_base_.seg_ms_tta_pipeline_no_labels}}
else:
    tta_pipeline = {{_base_.seg_ms_tta_pipeline}}
