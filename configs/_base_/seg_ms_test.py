# Multi-scale test of the segmentation configs: the paper's "ms" column.
# ``tools/test.py CONFIG CHECKPOINT --tta`` (as mmseg's) runs the test set
# through ``tta_pipeline`` and wraps the model in ``tta_model`` (mmseg's
# SegTTAModel, from mmseg's default_runtime), which averages the softmax
# scores of the views.
#
# The SN paper's text lost its test scales ("multi-scale testing with ."),
# and it mentions no flip, so the views are six scales of the image, x0.5
# to x1.75 (mmseg's ratios, whose single-scale test sizes these configs
# use), without flip.  Add mmseg's RandomFlip pair to ``transforms`` to test
# with flip too.
seg_ms_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
_scales = [
    dict(type='Resize', scale_factor=r, keep_ratio=True) for r in seg_ms_ratios
]
# With labels (val splits), and without (a test split to submit).
seg_ms_tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            _scales, [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')]
        ])
]
seg_ms_tta_pipeline_no_labels = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug', transforms=[_scales, [dict(type='PackSegInputs')]])
]
del _scales
