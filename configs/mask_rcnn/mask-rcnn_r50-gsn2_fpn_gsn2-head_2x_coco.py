# Ours (no paper row): the SN/SN 2x config with group SN, two channel groups
# each with its own ratios, in backbone, FPN, box and mask heads.  The
# backbone starts from the SN ImageNet model converted with --groups 2
# (each layer's logits copied to both groups; see this folder's README).
_base_ = './mask-rcnn_r50-sn_fpn_sn-head_2x_coco.py'
model = {{_base_.det_mask_fpn.gsn2}}
