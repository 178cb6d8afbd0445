# SN paper Table VII, SyncSN(8,2) row: the SyncSN(8,32) config with
# the backbone starting from the SN ImageNet model of 8 GPUs x 2 images.
_base_ = './fcn-1conv_r50b-d8-syncsn-8x32_8xb2-40k_cityscapes-713x713.py'
model = dict(
    backbone=dict(
        init_cfg=dict(checkpoint='checkpoints/resnet50-v1_sn-8x2_in1k.pth')))
