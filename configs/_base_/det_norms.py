# The normalisers of the detection configs (configs/faster_rcnn,
# configs/mask_rcnn) and where each goes, written once: every config picks
# its pieces with {{_base_.<name>.<norm>}}, <norm> one of the name tokens
# bn, gn, sn, ssn, syncsn, and ours (no paper row): gsn2 (group SN, two
# channel groups) and sn-gn (SN of IN, LN and GN; key sn_gn).  The family
# roots inherit this file next to the upstream bases; it only adds names
# those bases lack.
_norm_cfgs = dict(
    # BN fine-tuned with batch statistics (Table IV's BN/BN row).
    bn=dict(type='BN', requires_grad=True),
    gn=dict(type='GN', num_groups=32, requires_grad=True),
    sn=dict(type='SN', requires_grad=True),
    ssn=dict(type='SSN', requires_grad=True),
    syncsn=dict(type='SyncSN', requires_grad=True),
    # Ours: group SN, each half of the channels with its own ratios.
    gsn2=dict(type='SN', num_groups=2, requires_grad=True),
    # Ours: SN with GN in BN's place, for one image per GPU, where BN's
    # statistics would be those of a single image.
    sn_gn=dict(
        type='SN',
        normalizers=('IN', 'LN', 'GN'),
        gn_groups=32,
        requires_grad=True))
# requires_grad=True is spelt out because the family roots freeze BN† with
# requires_grad=False, and a child's norm_cfg merges into theirs.

# The ImageNet ResNet-50 each normaliser fine-tunes from.  SyncSN has SN's
# parameters and buffers, so it loads the SN model.  Which SN(8,k) model the
# paper's detection runs started from is lost from its text (see the
# READMEs); (8,32) is the released SN model every family here uses.  GN: the
# GN paper's model (Detectron's R-50-GN, which the paper's Detectron
# settings 2 and 3 had; mmengine's open-mmlab://detectron/resnet50_gn).
_imagenet = dict(
    bn='torchvision://resnet50',
    gn='open-mmlab://detectron/resnet50_gn',
    sn='checkpoints/resnet50-v1_sn-8x32_in1k.pth',
    ssn='checkpoints/resnet50-v1_ssn-8x32_in1k.pth',
    syncsn='checkpoints/resnet50-v1_sn-8x32_in1k.pth',
    # The SN model converted with tools/convert_checkpoint.py --groups 2
    # (each layer's logits copied to both groups) and --normalizers
    # IN,LN,GN (GN starting from BN's logit; see the mask_rcnn README).
    gsn2='checkpoints/resnet50-v1_sn-8x32_in1k_g2.pth',
    sn_gn='checkpoints/resnet50-v1_sn-8x32_in1k_in-ln-gn.pth')

# A fine-tuned ResNet part (FPN backbone; C4 backbone and conv5 head):
# norm_eval=False, because only a frozen BN† keeps its ImageNet statistics
# (norm_eval reaches _BatchNorm only, so for GN/SN it is for the record).
det_resnet = {
    norm:
    dict(
        norm_cfg=cfg,
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint=_imagenet[norm]))
    for norm, cfg in _norm_cfgs.items()
}


def _fpn_heads(norm_cfg, with_mask):
    """Head norm of the FPN detectors: every FPN conv, the 4conv-1fc box
    head and (Mask R-CNN) the mask head, as in mmdet's gn/ configs; the RPN
    head never has a norm."""
    roi_head = dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            conv_out_channels=256,
            norm_cfg=norm_cfg))
    if with_mask:
        roi_head['mask_head'] = dict(norm_cfg=norm_cfg)
    return dict(neck=dict(norm_cfg=norm_cfg), roi_head=roi_head)


# The input each ImageNet model was trained on, where it is not the families'
# torchvision RGB normalisation: Detectron's GN model saw BGR 0-255 minus
# the mean, unscaled (mmdet's own gn/ configs feed it the same).
det_rgb_input = dict(
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True)
_inputs = dict(
    gn=dict(
        data_preprocessor=dict(
            mean=[103.530, 116.280, 123.675],
            std=[1.0, 1.0, 1.0],
            bgr_to_rgb=False)))
# A fine-tuned backbone and the input its ImageNet model expects.
det_backbone = {
    norm: dict(backbone=det_resnet[norm], **_inputs.get(norm, {}))
    for norm in _norm_cfgs
}

# model deltas: head norm only (BN† backbone), and backbone + head norm.
det_faster_heads = {n: _fpn_heads(c, False) for n, c in _norm_cfgs.items()}
det_mask_heads = {n: _fpn_heads(c, True) for n, c in _norm_cfgs.items()}
det_faster_fpn = {
    n: dict(det_backbone[n], **det_faster_heads[n])
    for n in _norm_cfgs
}
det_mask_fpn = {
    n: dict(det_backbone[n], **det_mask_heads[n])
    for n in _norm_cfgs
}
# Faster R-CNN C4 (Table IV): one normaliser in the conv1-conv4 backbone and
# the conv5 RoI head.
det_c4 = {
    n: dict(det_backbone[n], roi_head=dict(shared_head=det_resnet[n]))
    for n in _norm_cfgs
}
# The from-scratch rows (‡): mmdet ResNet's own initialisation instead of an
# ImageNet model, for the conv5 head too, and no frozen stage; every
# normaliser sees the same (RGB) input, no ImageNet model's.
_scratch_init = [
    dict(type='Kaiming', layer='Conv2d'),
    dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])
]
det_c4_scratch = dict(
    data_preprocessor=det_rgb_input,
    backbone=dict(frozen_stages=-1, init_cfg=_scratch_init),
    roi_head=dict(shared_head=dict(init_cfg=_scratch_init)))
del _norm_cfgs, _imagenet, _inputs, _fpn_heads, _scratch_init
