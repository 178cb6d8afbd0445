# SN paper Table VII, SN(8,4) row: the SN(8,32) config with
# the backbone starting from the SN ImageNet model of 8 GPUs x 4 images.
_base_ = './fcn-1conv_r50b-d8-sn-8x32_8xb2-80k_ade20k-512x512.py'
model = dict(
    backbone=dict(
        init_cfg=dict(checkpoint='checkpoints/resnet50-v1_sn-8x4_in1k.pth')))
