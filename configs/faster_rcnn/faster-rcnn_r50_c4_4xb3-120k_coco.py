# BN†/BN† of Table IV, the SN paper's setting-1: Faster R-CNN with a
# ResNet-50 C4 (conv1-conv4 the backbone, conv5 the RoI head, both with the
# same normaliser), 4 GPUs x 3 images, shorter side 600, 80k iterations at
# lr 0.01 then 40k at 0.001, COCO 2017.  Every C4 config inherits it.
#
# Upstream's C4 model is caffe style with BGR input; the paper's ImageNet
# ResNet-50s (BN, GN, SN) are PyTorch models, so backbone and head are
# pytorch style with torchvision's RGB normalisation here.
_base_ = [
    'mmdet::faster_rcnn/faster-rcnn_r50-caffe_c4-1x_coco.py',
    '../_base_/switchable_norm.py',
    '../_base_/schedules/det_iter_schedules.py', '../_base_/det_norms.py'
]
# BN† is "a constant linear transformation layer" (the paper, 4.2), as
# Detectron's AffineChannel: statistics (norm_eval) and affine parameters
# (requires_grad=False) stay as loaded, in the backbone and in the conv5
# head alike.
norm_cfg = dict(type='BN', requires_grad=False)
model = dict(
    data_preprocessor={{_base_.det_rgb_input}},
    backbone=dict(
        style='pytorch',
        norm_cfg=norm_cfg,
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    roi_head=dict(
        shared_head=dict(
            style='pytorch',
            norm_cfg=norm_cfg,
            norm_eval=True,
            init_cfg=dict(
                type='Pretrained', checkpoint='torchvision://resnet50'))))
# "Each image is re-scaled such that its shorter side is 600 pixels"; the
# longer side is capped at 1000 as in the implementation the paper follows
# (jwyang/faster-rcnn.pytorch, TRAIN.MAX_SIZE / TEST.MAX_SIZE).
image_scale = (1000, 600)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
# 4 GPUs x 3 images.
train_dataloader = dict(batch_size=3, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
auto_scale_lr = dict(base_batch_size=12)
# lr 0.01; no weight decay on the norm layers' weight and bias, as in every
# detection setting of the SN paper (../_base_/switchable_norm.py).
optim_wrapper = dict(_base_.det_optim_wrapper, optimizer=dict(lr=0.01))
train_cfg = {{_base_.det_120k.train_cfg}}
param_scheduler = {{_base_.det_120k.param_scheduler}}
default_hooks = {{_base_.det_iter_hooks}}
log_processor = {{_base_.det_iter_log}}
