# Multi-scale (x0.5 - x1.75) + flip test of the parent config, with
# mmseg's tta_pipeline and SegTTAModel (what its tools/test.py --tta does).
# Test only: evaluate a checkpoint trained with the parent config.
_base_ = './pspnet_r50b-d8-sn_8xb2-40k_cityscapes-713x713.py'
model = dict(_delete_=True, type='SegTTAModel', module={{_base_.model}})
test_dataloader = dict(dataset=dict(pipeline={{_base_.tta_pipeline}}))
# No training from here: the test-time model cannot train.
train_dataloader = None
train_cfg = None
optim_wrapper = None
param_scheduler = None
