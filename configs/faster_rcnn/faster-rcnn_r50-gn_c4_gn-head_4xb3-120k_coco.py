# GN/GN of Table IV: GN in the backbone and the conv5 head, from the GN
# paper's ImageNet ResNet-50 (Detectron's, fed its BGR input;
# ../_base_/det_norms.py).
_base_ = './faster-rcnn_r50_c4_4xb3-120k_coco.py'
model = {{_base_.det_c4.gn}}
