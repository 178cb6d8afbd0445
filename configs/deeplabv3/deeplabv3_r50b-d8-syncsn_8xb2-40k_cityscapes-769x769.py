# DeepLabV3 R50b-D8 with SyncSN: SN whose BN statistics span all 8 GPUs
# (16 images).  On one process it computes exactly SN.  Same SN ImageNet
# checkpoint as the SN config.  SN paper Table VII, SyncSN rows.
_base_ = './deeplabv3_r50b-d8-sn_8xb2-40k_cityscapes-769x769.py'
norm_cfg = dict(type='SyncSN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
# SyncSN's running statistics are global already: no merge hook.
custom_hooks = []
