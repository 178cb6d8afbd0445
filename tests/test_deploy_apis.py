"""A deployed model through the upstream inference APIs: mmdet's
``inference_detector`` and ``DetInferencer``, mmseg's ``inference_model``
and ``MMSegInferencer``, mmaction2's ``inference_recognizer``, against the
trained model through the same APIs."""
import glob
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import run_tool
from mmaction.apis import inference_recognizer, init_recognizer
from mmdet.apis import DetInferencer, inference_detector, init_detector
from mmseg.apis import MMSegInferencer, inference_model, init_model

from ssn_norm.apis import deployed_inferencer, load_deployed
from ssn_norm.datasets.tiny_kinetics import make_tiny_kinetics
from ssn_norm.deploy import assert_plain
from ssn_norm.utils import sparse_switchable_norms

CLASSES = ('square', 'disc', 'triangle')
SSN = "dict(type='SSN', requires_grad=True)"
# Shrunk children of the upstream configs (no checkpoint, small images).
DET_CONFIG = f"""_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['ssn_norm'], allow_failed_imports=False)
norm = {SSN}
model = dict(
    backbone=dict(depth=18, base_channels=16, norm_cfg=norm,
                  norm_eval=False, frozen_stages=-1, init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32, norm_cfg=norm),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=3),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(in_channels=32, conv_out_channels=32, num_classes=3,
                       norm_cfg=norm)),
    test_cfg=dict(rcnn=dict(score_thr=0.0, max_per_img=20)))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline,
                                    metainfo=dict(classes={CLASSES!r})))
"""
SEG_CONFIG = f"""_base_ = ('mmseg::deeplabv3/'
          'deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py')
custom_imports = dict(imports=['ssn_norm'], allow_failed_imports=False)
norm = {SSN}
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=None),
    backbone=dict(depth=18, stem_channels=16, base_channels=16,
                  norm_cfg=norm),
    decode_head=dict(in_channels=128, channels=16, dilations=(1, 2),
                     norm_cfg=norm),
    auxiliary_head=dict(in_channels=64, channels=16, norm_cfg=norm))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 48), keep_ratio=True),
    dict(type='PackSegInputs')]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
"""

VIDEO_CONFIG = f"""_base_ = ('mmaction::recognition/i3d/'
          'i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py')
custom_imports = dict(imports=['ssn_norm'], allow_failed_imports=False)
model = dict(
    backbone=dict(depth=18, base_channels=16, pretrained=None,
                  pretrained2d=False, inflate=((1, 1), (1, 0), (1, 0), (0, 1)),
                  norm_cfg={SSN}),
    cls_head=dict(num_classes=4, in_channels=128))
test_pipeline = [
    dict(type='DecordInit', io_backend='disk'),
    dict(type='SampleFrames', clip_len=8, frame_interval=2, num_clips=2,
         test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 40)),
    dict(type='CenterCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')]
"""


def _freeze_randomly(model, members):
    """Every SSN layer frozen one-hot on a random (mean, var) choice among
    ``members``, with random affine and running statistics, as training
    ends."""
    generator = torch.Generator().manual_seed(0)

    def pick():
        return members[torch.randint(len(members), (1, ),
                                     generator=generator).item()]

    with torch.no_grad():
        for _, layer in sparse_switchable_norms(model):
            layer.mean_weight.copy_(F.one_hot(torch.tensor(pick()), 3))
            layer.var_weight.copy_(F.one_hot(torch.tensor(pick()), 3))
            layer.mean_fixed.fill_(1)
            layer.var_fixed.fill_(1)
            layer.weight.uniform_(0.5, 1.5, generator=generator)
            layer.bias.normal_(0, 0.3, generator=generator)
            layer.running_mean.normal_(0, 0.5, generator=generator)
            layer.running_var.uniform_(0.5, 2, generator=generator)


def _deploy(tmp_path, text, init, members, shape, *options):
    """Config, trained checkpoint (random, frozen SSN) and its deployed
    file, made through tools/deploy_ssn.py (with ``options``)."""
    config = tmp_path / 'config.py'
    config.write_text(text)
    model = init(str(config), device='cpu')
    _freeze_randomly(model, members)
    checkpoint = tmp_path / 'trained.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)
    out = tmp_path / 'deployed.pth'
    assert run_tool('deploy_ssn', config, checkpoint, out, '--check-shape',
                    *shape, *options) == 0
    return str(config), str(checkpoint), str(out)


def _image(height=80, width=96):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    image[20:60, 30:70] = (200, 40, 40)
    return image


def test_mmdet_inference_detector_and_det_inferencer(tmp_path, capsys):
    config, checkpoint, out = _deploy(tmp_path, DET_CONFIG, init_detector,
                                      (0, 1, 2), (1, 3, 64, 64))
    printed = capsys.readouterr().out
    # The summary names every replacement whole, and the check its result.
    assert 'SwitchedNorm(mean=IN, var=LN)' in printed
    assert 'folded into the preceding conv' in printed
    assert ('check on a random input of shape (1, 3, 64, 64): 5 output '
            'tensors unchanged, largest difference') in printed
    deployed = load_deployed(config, out)
    assert_plain(deployed)
    assert deployed.dataset_meta['classes'] == CLASSES
    trained = init_detector(config, checkpoint, device='cpu')
    image = _image()
    ours = inference_detector(deployed, image).pred_instances
    theirs = inference_detector(trained, image).pred_instances
    assert len(theirs) > 0
    torch.testing.assert_close(
        ours.bboxes, theirs.bboxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(
        ours.scores, theirs.scores, rtol=1e-4, atol=1e-5)
    inferencer = deployed_inferencer(
        DetInferencer, config, out, device='cpu', show_progress=False)
    assert inferencer.visualizer.dataset_meta['classes'] == CLASSES
    result = inferencer(image, return_datasamples=True)
    torch.testing.assert_close(
        result['predictions'][0].pred_instances.scores,
        theirs.scores,
        rtol=1e-4,
        atol=1e-5)
    # The plain inferencer with the trained weights, for comparison: the
    # same classes (from the checkpoint-less default it would be COCO's).
    reference = DetInferencer(
        config, checkpoint, device='cpu', show_progress=False)
    expected = reference(image, return_datasamples=True)['predictions'][0]
    torch.testing.assert_close(
        result['predictions'][0].pred_instances.bboxes,
        expected.pred_instances.bboxes,
        rtol=1e-4,
        atol=1e-3)


def test_mmseg_inference_model_and_inferencer(tmp_path):
    # LN and BN only: ASPP's image pool normalises 1x1 maps, where IN's
    # unbiased variance is undefined.
    config, checkpoint, out = _deploy(tmp_path, SEG_CONFIG, init_model, (1, 2),
                                      (1, 3, 48, 64))
    deployed = load_deployed(config, out)
    assert_plain(deployed)
    assert len(deployed.dataset_meta['classes']) == 19  # Cityscapes
    assert len(deployed.dataset_meta['palette']) == 19
    trained = init_model(config, checkpoint, device='cpu')
    image = _image()
    ours = inference_model(deployed, image).seg_logits.data
    theirs = inference_model(trained, image).seg_logits.data
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    inferencer = deployed_inferencer(
        MMSegInferencer, config, out, device='cpu')
    result = inferencer(image, return_datasamples=True)
    torch.testing.assert_close(
        result.seg_logits.data, theirs, rtol=1e-4, atol=1e-4)


def test_mmaction_inference_recognizer(tmp_path):
    # LN and BN only: the last stage's maps are too small for IN's unbiased
    # variance; BN choices unfolded as BatchNorm3d where not folded.  A
    # 3-D recognizer's input: (batch, clips, C, T, H, W).
    config, checkpoint, out = _deploy(tmp_path, VIDEO_CONFIG, init_recognizer,
                                      (1, 2), (1, 1, 3, 8, 32, 32),
                                      '--spatial-dims', '3')
    # The usual mistake, a 5-D clip: refused with the 6-D shape to give.
    with pytest.raises(ValueError, match=r'--check-shape 1 1 3 8 32 32'):
        run_tool('deploy_ssn', config, checkpoint, tmp_path / 'x.pth',
                 '--check-shape', 1, 3, 8, 32, 32)
    deployed = load_deployed(config, out)
    assert_plain(deployed)
    trained = init_recognizer(config, checkpoint, device='cpu')
    videos = make_tiny_kinetics(
        str(tmp_path / 'kinetics'),
        num_train=1,
        num_val=1,
        frame_size=64,
        rawframes=False)
    (video, ) = glob.glob(osp.join(videos['videos_val'], '*.mp4'))
    ours = inference_recognizer(deployed, video).pred_score
    theirs = inference_recognizer(trained, video).pred_score
    assert ours.shape == (4, )
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_deployed_inferencer_takes_no_weights(tmp_path):
    with pytest.raises(TypeError, match='sets weights itself'):
        deployed_inferencer(DetInferencer, 'c.py', 'd.pth', weights='x')
