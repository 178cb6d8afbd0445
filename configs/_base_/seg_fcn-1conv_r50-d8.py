# The SN paper's segmentation model (Table VII), in mmseg's terms.
#
# The paper (TPAMI 4.3.1; symbols lost from the text): "we use DeepLab [53]
# with ResNet50 as the backbone network, where [...] the last two blocks in
# the original ResNet contains atrous convolution with [...] and [...]
# respectively.  Following [54], we employ "poly" learning rate policy
# [...] and use the auxiliary loss with the weight [...] during training";
# "We employ the open-source software in PyTorch" (CSAILVision's
# semantic-segmentation-pytorch) "and only replace the normalization layers
# in CNNs with the other settings fixed".  [53] is DeepLab v2 (TPAMI 2018).
# The authors' released code on that software (switchablenorms/
# SwitchNorm_Segmentation), whose ADE20K numbers are Table VII's, builds
# "ResNet50_dilated8 + c1_bilinear_deepsup", which is, in mmseg:
# - the backbone: a ResNet-50 with the original 7x7 first convolution
#   (mmseg's 'ResNet', set by the dataset bases' seg_model), dilated to
#   output stride 8: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), the
#   first block of each dilated stage at half the dilation
#   (contract_dilation), as mmseg's R50-D8;
# - the decode head: one 3x3 conv (2048 -> 512 channels, norm, ReLU), a 1x1
#   classifier and bilinear upsampling: FCNHead with num_convs=1 and
#   concat_input=False;
# - the auxiliary head ("deepsup"): the same on res4 (in_index=2, 1024 ->
#   512 channels), loss weight 0.4 (the released deep_sup_scale; the
#   paper's number was lost, PSPNet's [54] is 0.4).
# Neither head has dropout in the released code (mmseg's FCN has 0.1), and
# the aux head has 512 channels there (mmseg's 256): both as released.
_base_ = 'mmseg::_base_/models/fcn_r50-d8.py'
model = dict(
    decode_head=dict(num_convs=1, concat_input=False, dropout_ratio=0.),
    auxiliary_head=dict(channels=512, dropout_ratio=0.))
