# Ours (no paper row): SN whose members are IN, LN and GN (32 groups) in
# backbone, FPN, box and mask heads, for one image per GPU, where BN would
# see a single image.  The backbone starts from the SN ImageNet model
# converted with --normalizers IN,LN,GN: IN and LN keep their logits and GN
# takes BN's (our choice: the same initial ratios, GN in BN's cross-sample
# role; see this folder's README).
_base_ = './mask-rcnn_r50-sn_fpn_sn-head_2x_coco.py'
model = {{_base_.det_mask_fpn.sn_gn}}
# 8 GPUs x 1 image: the LR halved (linear scaling), the 2x schedule's
# iterations and steps doubled, as Detectron does for half the batch.
train_dataloader = dict(batch_size=1)
auto_scale_lr = dict(base_batch_size=8)
optim_wrapper = dict(optimizer=dict(lr=0.01))
train_cfg = {{_base_.det_2x_8xb1.train_cfg}}
param_scheduler = {{_base_.det_2x_8xb1.param_scheduler}}
# No BN member, so no running statistics for SyncNormStatsHook to merge,
# and none for the inherited BatchStatsHook to average (it says so once).
custom_hooks = []
