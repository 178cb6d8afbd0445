# The normalisers of the segmentation configs (configs/fcn, configs/pspnet):
# mmseg EncoderDecoder models with a ResNet-50 v1 backbone, a decode head and
# an FCN auxiliary head.
#
# mmseg's base model files bind ``norm_cfg`` where they are defined, so a
# top-level ``norm_cfg`` in a child reaches no layer: every entry below sets
# the norm in the backbone and in both heads, together with the ImageNet
# model the backbone starts from and the optimizer / hook recipe of that
# normaliser.  A config that switches to normaliser X writes
#   norm_cfg = {{_base_.seg_norms.X.norm_cfg}}
#   model = {{_base_.seg_norms.X.model}}
# plus ``optim_wrapper`` and ``custom_hooks`` from the same entry where it
# has them (SN, SyncSN, SSN).
_base_ = ['./switchable_norm.py']

# mmseg's 'ResNet' (7x7 stem, stride on the 3x3 conv; 'r50b' in mmseg's
# names) is the ResNet-50 v1 of the SN paper and of the released SN/SSN
# ImageNet models; mmseg's own R50-D8 configs use the deep-stem ResNetV1c,
# of which no SN model exists.  SyncBN (mmseg's default norm) starts from
# torchvision's BN model of the same shape.
seg_r50b_backbone = dict(
    type='ResNet',
    init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50'))

# The converted SN / SSN ImageNet models (docs/checkpoints.md).  (8,k): the
# ImageNet batch setting, 8 GPUs x k images; the SN paper's segmentation
# rows differ only in this file.
_sn_8x32 = 'checkpoints/resnet50-v1_sn-8x32_in1k.pth'
_ssn_8x32 = 'checkpoints/resnet50-v1_ssn-8x32_in1k.pth'


def _norm_everywhere(norm_cfg, checkpoint):
    """Model overrides putting ``norm_cfg`` in the backbone and both heads
    and starting the backbone from ``checkpoint``."""
    return dict(
        backbone=dict(norm_cfg=norm_cfg, init_cfg=dict(checkpoint=checkpoint)),
        decode_head=dict(norm_cfg=norm_cfg),
        auxiliary_head=dict(norm_cfg=norm_cfg))


_gn = dict(type='GN', num_groups=32, requires_grad=True)
_sn = dict(type='SN', requires_grad=True)
_syncsn = dict(type='SyncSN', requires_grad=True)
_ssn = dict(type='SSN', requires_grad=True)
_gsn2 = dict(type='SN', num_groups=2, requires_grad=True)
seg_norms = dict(
    # The GN paper's ImageNet ResNet-50 (7x7 stem, 32 groups): Detectron's
    # R-50-GN (mmengine's open-mmlab://detectron/resnet50_gn), trained on
    # BGR input in 0-255 with the mean subtracted and no scaling, as
    # mmdet's gn/ configs feed it.  (open-mmlab://contrib/resnet50_gn is a
    # third-party PyTorch GN model, not the GN paper's.)
    gn=dict(
        norm_cfg=_gn,
        model=dict(
            _norm_everywhere(_gn, 'open-mmlab://detectron/resnet50_gn'),
            data_preprocessor=dict(
                mean=[103.530, 116.280, 123.675],
                std=[1.0, 1.0, 1.0],
                bgr_to_rgb=False))),
    # SN recipe: ratio logits without weight decay; plain SN keeps per-GPU
    # running statistics, which DDP does not broadcast: SyncNormStatsHook
    # merges them (means and second moments) before checkpoints and
    # validation.  Tested with batch averages (BatchStatsHook).
    sn=dict(
        norm_cfg=_sn,
        model=_norm_everywhere(_sn, _sn_8x32),
        optim_wrapper=dict(paramwise_cfg={{_base_.sn_paramwise_cfg}}),
        custom_hooks={{_base_.sn_custom_hooks}},
        default_hooks={{_base_.sn_default_hooks}}),
    # SyncSN: SN whose BN statistics span all GPUs (exactly SN on one
    # process); its running statistics are global already, so no hook.  It
    # starts from the same SN ImageNet models as SN (the paper: "SyncSN and
    # SN share the same pre-trained models for this task").
    syncsn=dict(
        norm_cfg=_syncsn,
        model=_norm_everywhere(_syncsn, _sn_8x32),
        optim_wrapper=dict(paramwise_cfg={{_base_.sn_paramwise_cfg}}),
        custom_hooks=[],
        default_hooks={{_base_.sn_default_hooks}}),
    # SSN recipe: logits at lr x 0.1 without decay, their gradient norm
    # clipped to 1, the SparsestMax radius 0 -> 1 over the run.
    ssn=dict(
        norm_cfg=_ssn,
        model=_norm_everywhere(_ssn, _ssn_8x32),
        optim_wrapper={{_base_.ssn_optim_wrapper}},
        custom_hooks={{_base_.ssn_custom_hooks}},
        default_hooks={{_base_.sn_default_hooks}}),
    # Ours (no paper row): group SN, two channel groups each with its own
    # ratios, from the SN(8,2) ImageNet model converted with --groups 2
    # (each layer's logits copied to both groups).  The SN recipe (optimizer,
    # hook) is the SN(8,2) parent's.
    gsn2_8x2=dict(
        norm_cfg=_gsn2,
        model=_norm_everywhere(_gsn2,
                               'checkpoints/resnet50-v1_sn-8x2_in1k_g2.pth')))
del _sn_8x32, _ssn_8x32, _norm_everywhere, _gn, _sn, _syncsn, _ssn, _gsn2
