# PSPNet R50b-D8 with SyncSN (BN statistics over all 8 GPUs; exactly SN on
# one process).  SN paper Table VIII, SyncSN rows.
_base_ = './pspnet_r50b-d8-sn_8xb2-40k_cityscapes-713x713.py'
norm_cfg = dict(type='SyncSN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
# SyncSN's running statistics are global already: no merge hook.
custom_hooks = []
