# GN‡/GN of Table IV: the parent config trained from scratch, "without
# pretraining on ImageNet" (the paper, 4.2.2): no ImageNet model and no frozen
# stage, in the backbone and the conv5 head.
_base_ = './faster-rcnn_r50-gn_c4_gn-head_4xb3-120k_coco.py'
model = {{_base_.det_c4_scratch}}
