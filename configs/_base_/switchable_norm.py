# Shared pieces of every ssn-norm config.  Inherit it next to the upstream
# bases; it only adds keys the upstream bases do not define.
custom_imports = dict(imports=['ssn_norm'], allow_failed_imports=False)

# SN recipe (detection / segmentation): ratio logits take no weight decay.
# mmengine's norm_decay_mult only sees _BatchNorm/GroupNorm/LayerNorm, so the
# logits are matched by name.  Use as
#   optim_wrapper = dict(paramwise_cfg={{_base_.sn_paramwise_cfg}})
sn_paramwise_cfg = dict(
    custom_keys={
        'mean_weight': dict(decay_mult=0.),
        'var_weight': dict(decay_mult=0.),
    })

# Plain SN/SSN keep per-GPU running statistics and DDP does not broadcast
# buffers: SyncNormStatsHook merges them (means and second moments) before
# checkpoints and validation.  SyncSN/SyncSSN need no hook.
#   custom_hooks = {{_base_.sn_custom_hooks}}
sn_custom_hooks = [dict(type='SyncNormStatsHook')]

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
