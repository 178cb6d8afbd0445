# BN/BN of Table IV: BN fine-tuned with batch statistics (3 images per GPU,
# not synchronised) in the backbone and the conv5 head.
_base_ = './faster-rcnn_r50_c4_4xb3-120k_coco.py'
model = {{_base_.det_c4.bn}}
