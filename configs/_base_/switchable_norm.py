# Shared pieces of every ssn-norm config.  Inherit it next to the upstream
# bases; it only adds keys the upstream bases do not define.
custom_imports = dict(imports=['ssn_norm'], allow_failed_imports=False)

# SN recipe (detection / segmentation / video): the ratio logits take no
# weight decay.  This is the project's choice, not the SN paper's: its
# ImageNet setting reads "We use a weight decay of [lost] for all parameters
# including [lost] and [lost]" (no exception is named), and its detection,
# segmentation and video texts say nothing about the logits; the authors'
# released segmentation code (switchablenorms/SwitchNorm_Segmentation,
# train.py group_weight) puts mean_weight and var_weight in its no-decay
# group.  They are matched by name (custom_keys), which overrides any
# norm_decay_mult.  Use as
#   optim_wrapper = dict(paramwise_cfg={{_base_.sn_paramwise_cfg}})
sn_paramwise_cfg = dict(custom_keys={
    'mean_weight': dict(decay_mult=0.),
    'var_weight': dict(decay_mult=0.),
})

# Plain SN/SSN keep per-GPU running statistics and DDP does not broadcast
# buffers: SyncNormStatsHook merges them (means and second moments) before
# checkpoints and validation.  SyncSN/SyncSSN need no hook.
#   custom_hooks = {{_base_.sn_custom_hooks}}
sn_custom_hooks = [dict(type='SyncNormStatsHook')]

# The SN paper's test statistics (TPAMI 3, "Inference"): "BN uses batch
# average after training without computing moving average": the frozen
# network is fed "a certain number of mini-batches randomly chosen from the
# training set" and the means and variances of every SN layer averaged.
# BatchStatsHook does it once training ends, before the last checkpoint
# and the final validation, so tools/test.py on the last checkpoint tests
# with them.  How many batches is not in the text; it found 50k ImageNet
# samples enough (76.90 against 76.92 with all of them): 200 batches per
# GPU, which for ImageNet (8,32) is those 50k samples (8 x 32 x 196), and
# here as many batch moments as that, each over a comparable number of
# pixels per GPU (0.5-2.1 M for 2 crops of 512x512 to 2 images of 800x1333,
# 6-13 M for 4-8 clips of 32 frames; 1.6 M for 32 crops of 224x224).  A
# mini config's loader has fewer batches; then each of them is used once.
# Moving averages instead (also for testing a checkpoint that holds batch
# averages: it keeps the moving averages they replaced):
#   --cfg-options default_hooks.batch_stats.statistics=moving_average
# Use as (SN, SSN, SyncSN configs; merged into the parent's default_hooks)
#   default_hooks = {{_base_.sn_default_hooks}}
sn_default_hooks = dict(
    batch_stats=dict(
        type='BatchStatsHook', num_batches=200, stages=('train_end', )))

# SSN recipe: ratio logits with lr x 0.1, no weight decay, and their gradient
# norm clipped to 1.0 by RatioClipOptimWrapper, plus the radius schedule.
#   optim_wrapper = {{_base_.ssn_optim_wrapper}}  (merged into the parent's)
#   custom_hooks = {{_base_.ssn_custom_hooks}}
# Add dict(type='RatioLoggerHook') to log the ratios during training.
ssn_paramwise_cfg = dict(
    custom_keys={
        'mean_weight': dict(lr_mult=0.1, decay_mult=0.),
        'var_weight': dict(lr_mult=0.1, decay_mult=0.),
    })
ssn_optim_wrapper = dict(
    type='RatioClipOptimWrapper',
    constructor='SwitchableOptimWrapperConstructor',
    ratio_clip_grad=dict(max_norm=1.0),
    paramwise_cfg=ssn_paramwise_cfg)
ssn_custom_hooks = [
    dict(type='SparsestMaxRadiusHook'),
    dict(type='SyncNormStatsHook')
]

# The SN paper's detection settings (Tables IV-VI): "For all settings, we set
# weight decay to 0 for both [gamma] and [beta] following [5]" (TPAMI 4.2.1;
# [5] is the GN paper, whose Detectron configs take no decay on the norm
# affines), 1e-4 ("a weight decay of [1e-4] on the network parameters") on
# the rest.  mmengine's norm_decay_mult reaches only torch's norm classes;
# SwitchableOptimWrapperConstructor extends it to the SN layers' weight and
# bias.  The detection family roots use it as
#   optim_wrapper = {{_base_.det_optim_wrapper}}
det_optim_wrapper = dict(
    constructor='SwitchableOptimWrapperConstructor',
    paramwise_cfg=dict(norm_decay_mult=0.))
