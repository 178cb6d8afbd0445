"""Converting released SN/SSN and BN ResNet checkpoints (pure functions).

The released-layout dicts are fabricated from an independent
reimplementation of the authors' ResNet v1 with SwitchNorm2d (written here
from the paper's formulas, released shapes and names), so the tests check
both the key mapping and that the converted mmdet backbone computes the same
eval features.
"""
import re
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from mmdet.models.backbones import ResNet, ResNetV1d
from mmseg.models.backbones import ResNetV1c
from torch import nn

import ssn_norm  # noqa: F401  registers SN / SSN
from ssn_norm.convert import (ConversionError, check_loadable, convert_resnet,
                              detect_format, extract_state_dict)


# ------------------------------------------- independent reimplementation
class RefSwitchNorm2d(nn.Module):
    """Released SwitchNorm2d / SSN2d in eval: shapes (1, C, 1, 1) etc."""

    def __init__(self, channels, sparse=False):
        super().__init__()
        self.sparse = sparse
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.mean_weight = nn.Parameter(torch.ones(3))
        self.var_weight = nn.Parameter(torch.ones(3))
        self.register_buffer('running_mean', torch.zeros(1, channels, 1))
        self.register_buffer('running_var', torch.zeros(1, channels, 1))
        if sparse:
            self.register_buffer('mean_fixed', torch.LongTensor([0]))
            self.register_buffer('var_fixed', torch.LongTensor([0]))
            self.register_buffer('radius', torch.zeros(1))

    def forward(self, x):
        n, c, h, w = x.shape
        flat = x.reshape(n, c, h * w)
        mean_in = flat.mean(-1, keepdim=True)
        var_in = flat.var(-1, keepdim=True)
        mean_ln = mean_in.mean(1, keepdim=True)
        var_ln = (var_in + mean_in**2).mean(1, keepdim=True) - mean_ln**2
        if self.sparse:  # frozen SSN: the logits are the one-hot ratios
            mean_w, var_w = self.mean_weight, self.var_weight
        else:
            mean_w = F.softmax(self.mean_weight, 0)
            var_w = F.softmax(self.var_weight, 0)
        mean = (
            mean_w[0] * mean_in + mean_w[1] * mean_ln +
            mean_w[2] * self.running_mean)
        var = (
            var_w[0] * var_in + var_w[1] * var_ln +
            var_w[2] * self.running_var)
        flat = (flat - mean) / (var + 1e-5).sqrt()
        return flat.reshape(n, c, h, w) * self.weight + self.bias


class RefBottleneck(nn.Module):

    def __init__(self, inplanes, planes, stride, sparse):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.sn1 = RefSwitchNorm2d(planes, sparse)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.sn2 = RefSwitchNorm2d(planes, sparse)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.sn3 = RefSwitchNorm2d(planes * 4, sparse)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                RefSwitchNorm2d(planes * 4, sparse))

    def forward(self, x):
        out = F.relu(self.sn1(self.conv1(x)))
        out = F.relu(self.sn2(self.conv2(out)))
        out = self.sn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class RefResNetV1(nn.Module):
    """Released ResNetV1SN / ResNetV1SSN; returns the four stage outputs."""

    def __init__(self, blocks=(3, 4, 6, 3), sparse=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.sn1 = RefSwitchNorm2d(64, sparse)
        inplanes = 64
        for index, (count,
                    planes) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stride = 1 if index == 0 else 2
            layers = []
            for block in range(count):
                layers.append(
                    RefBottleneck(inplanes, planes,
                                  stride if block == 0 else 1, sparse))
                inplanes = planes * 4
            setattr(self, f'layer{index + 1}', nn.Sequential(*layers))
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.sn1(self.conv1(x))), 3, 2, 1)
        outs = []
        for index in range(1, 5):
            x = getattr(self, f'layer{index}')(x)
            outs.append(x)
        return outs


def randomise(model, sparse=False, generator=None):
    """Random weights of the right scale; SSN layers frozen one-hot."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, (2 / fan_in)**0.5)
            elif isinstance(module, RefSwitchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2)
                if sparse:
                    choice = torch.randint(3, (2, ))
                    module.mean_weight.copy_(F.one_hot(choice[0], 3))
                    module.var_weight.copy_(F.one_hot(choice[1], 3))
                    module.mean_fixed.fill_(1)
                    module.var_fixed.fill_(1)
                    module.radius.fill_(1.0)
                else:
                    module.mean_weight.normal_(0, 1)
                    module.var_weight.normal_(0, 1)
    return model


def released(sparse=False, prefix='module.', blocks=(3, 4, 6, 3)):
    ref = randomise(RefResNetV1(blocks, sparse), sparse).eval()
    state = OrderedDict(
        (prefix + k, v.clone()) for k, v in ref.state_dict().items())
    return ref, {'state_dict': state, 'epoch': 100, 'best_prec1': 76.9}


def assert_same_features(backbone, ref):
    """The converted backbone's four stages equal the released model's
    (float64, on one random batch)."""
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref.double()(x.double())
        got = backbone.double()(x.double())
    for level, (e, g) in enumerate(zip(expected, got)):
        torch.testing.assert_close(
            g, e, rtol=1e-9, atol=1e-9, msg=f'stage {level + 1}')


# ------------------------------------------------------------- released
@pytest.mark.parametrize('sparse', [False, True], ids=['SN', 'SSN'])
def test_released_resnet50_converts_and_reproduces_features(sparse):
    ref, checkpoint = released(sparse)
    state = extract_state_dict(checkpoint)
    assert detect_format(state) == ('released-ssn'
                                    if sparse else 'released-sn')
    converted, report = convert_resnet(state)
    norm = 'SSN' if sparse else 'SN'
    assert report.target == norm and report.depth == 50
    assert report.dropped == [('fc.weight', 'ImageNet classifier'),
                              ('fc.bias', 'ImageNet classifier')]
    assert ('layer1.0.sn1', 'layer1.0.bn1') in report.renamed
    assert ('sn1', 'bn1') in report.renamed

    backbone = ResNet(
        depth=50,
        norm_cfg=dict(type=norm),
        style='pytorch',
        out_indices=(0, 1, 2, 3))
    backbone.eval()  # mmdet's train() override returns None
    backbone.load_state_dict(converted, strict=True)
    assert converted['bn1.weight'].shape == (64, )
    assert converted['layer2.0.downsample.1.running_var'].shape == (512, )
    torch.testing.assert_close(converted['layer3.5.bn2.weight'],
                               state['layer3.5.sn2.weight'].reshape(-1))
    assert_same_features(backbone, ref)


@pytest.mark.parametrize('sparse', [False, True], ids=['SN', 'SSN'])
def test_released_resnet50_to_group_sn_reproduces_features(sparse):
    """groups=2: every layer's logits copied to both channel groups (SSN
    flags too), so group SN with num_groups=2 computes the source's
    features; the group checkpoint passes through again."""
    ref, checkpoint = released(sparse)
    converted, report = convert_resnet(
        extract_state_dict(checkpoint), groups=2)
    norm = 'SSN' if sparse else 'SN'
    assert converted['layer1.0.bn1.mean_weight'].shape == (2, 3)
    for row in converted['layer4.2.bn3.var_weight']:
        torch.testing.assert_close(
            row, checkpoint['state_dict']['module.layer4.2.sn3.var_weight'])
    if sparse:
        assert converted['bn1.mean_fixed'].shape == (2, )
    assert any('num_groups=2' in note for note in report.notes)
    backbone = ResNet(
        depth=50,
        norm_cfg=dict(type=norm, num_groups=2),
        style='pytorch',
        out_indices=(0, 1, 2, 3))
    backbone.eval()  # mmdet's train() override returns None
    backbone.load_state_dict(converted, strict=True)
    assert_same_features(backbone, ref)
    again, report = convert_resnet(converted)
    assert report.source_format == 'ssn-norm'
    for key, value in converted.items():
        assert torch.equal(again[key], value), key
    with pytest.raises(ConversionError, match='not 4; convert its ungrouped'):
        convert_resnet(converted, groups=4)
    with pytest.raises(ConversionError, match='groups must be a positive'):
        convert_resnet(converted, groups=0)


def test_released_without_prefix_and_resnet101():
    _, checkpoint = released(prefix='', blocks=(3, 4, 23, 3))
    converted, report = convert_resnet(extract_state_dict(checkpoint))
    assert report.depth == 101
    assert report.arch == 'ResNet-101 (Bottleneck, 7x7 stem)'
    ResNet(
        depth=101, norm_cfg=dict(type='SN')).load_state_dict(
            converted, strict=True)


def test_released_sn_to_ssn_is_an_initialisation_with_a_note():
    _, checkpoint = released()
    converted, report = convert_resnet(
        extract_state_dict(checkpoint), to='ssn')
    model = ResNet(depth=50, norm_cfg=dict(type='SSN'))
    model.load_state_dict(converted, strict=True)
    assert int(converted['layer4.2.bn3.mean_fixed']) == 0
    assert converted['bn1.radius'].tolist() == [0.0]
    assert any('SparsestMax' in note for note in report.notes)


def test_converted_and_mmpretrain_trained_sn_pass_through():
    _, checkpoint = released(sparse=True)
    converted, _ = convert_resnet(extract_state_dict(checkpoint))
    again, report = convert_resnet(converted)
    assert report.source_format == 'ssn-norm' and report.target == 'SSN'
    assert list(again) == list(converted)
    for key, value in converted.items():
        assert torch.equal(again[key], value), key
    # An SSN classifier trained with mmpretrain and this plugin.
    classifier = {'backbone.' + k: v for k, v in converted.items()}
    classifier['head.fc.weight'] = torch.randn(1000, 2048)
    again, report = convert_resnet(classifier)
    assert report.source_flavour == 'mmpretrain' and list(again) == list(
        converted)


def test_released_ssn_refuses_to_become_sn():
    _, checkpoint = released(sparse=True)
    with pytest.raises(ConversionError, match=r'SSN checkpoint.*--to ssn'):
        convert_resnet(extract_state_dict(checkpoint), to='sn')


def test_module_prefix_on_some_keys_only_is_refused():
    _, checkpoint = released()
    state = checkpoint['state_dict']
    state['conv1.weight'] = state.pop('module.conv1.weight')
    with pytest.raises(ConversionError, match='some keys carry the "module.'):
        extract_state_dict(checkpoint)


# ------------------------------------------------------------------- BN
# How bn_resnet draws each BN tensor: (in-place sampler, its two arguments).
BN_DRAWS = dict(
    weight=('uniform_', 0.5, 1.5),
    bias=('normal_', 0, 0.2),
    running_mean=('normal_', 0, 0.5),
    running_var=('uniform_', 0.5, 2))


def bn_resnet(depth=50, cls=ResNet, **kwargs):
    """An eval-mode BN ResNet whose BN parameters and statistics are drawn
    at random (BN_DRAWS), so every converted value matters."""
    model = cls(depth=depth, **kwargs)
    model.eval()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for module in bns:
            for name, (sampler, first, second) in BN_DRAWS.items():
                getattr(getattr(module, name), sampler)(first, second)
    return model


def freeze_on_bn(model):
    """Every SSN layer frozen on (BN, BN): then it is an eval BatchNorm."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ssn_norm.SSN):
                module.mean_weight.copy_(torch.tensor([0., 0., 1.]))
                module.var_weight.copy_(torch.tensor([0., 0., 1.]))
                module.mean_fixed.fill_(1)
                module.var_fixed.fill_(1)
    model.eval()
    return model


def test_torchvision_layout_initialises_sn_and_ssn_backbones():
    bn = bn_resnet(18)
    # torchvision's ResNet keys are mmdet's plus the classifier.
    state = OrderedDict(bn.state_dict())
    state['fc.weight'] = torch.randn(1000, 512)
    state['fc.bias'] = torch.randn(1000)
    converted, report = convert_resnet(state)
    assert report.source_flavour == 'torchvision' and report.target == 'SN'
    assert report.depth == 18 and 'BasicBlock' in report.arch
    dropped = dict(report.dropped)
    assert dropped['fc.weight'] == 'ImageNet classifier'
    assert dropped['layer1.0.bn1.num_batches_tracked'].startswith('BN batch')
    sn = ResNet(depth=18, norm_cfg=dict(type='SN'))
    sn.load_state_dict(converted, strict=True)
    torch.testing.assert_close(sn.layer2[0].bn1.running_var,
                               bn.layer2[0].bn1.running_var)
    assert sn.layer2[0].bn1.mean_weight.tolist() == [1.0, 1.0, 1.0]

    converted, report = convert_resnet(state, to='ssn')
    ssn = ResNet(depth=18, norm_cfg=dict(type='SSN'), out_indices=(0, 1, 2, 3))
    ssn.load_state_dict(converted, strict=True)
    # Frozen on BN, the SSN backbone is exactly the BN backbone.
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for got, expected in zip(freeze_on_bn(ssn)(x), bn(x)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_mmpretrain_layout_plain_and_deep_stem():
    plain = bn_resnet(50)
    state = OrderedDict(
        ('backbone.' + k, v) for k, v in plain.state_dict().items())
    state['head.fc.weight'] = torch.randn(1000, 2048)
    state['head.fc.bias'] = torch.randn(1000)
    converted, report = convert_resnet(state)
    assert report.source_flavour == 'mmpretrain'
    assert ('head.fc.bias', 'ImageNet classifier') in report.dropped
    ResNet(
        depth=50, norm_cfg=dict(type='SN')).load_state_dict(
            converted, strict=True)

    # mmpretrain's ResNetV1d stem: three ConvModules (stem.i.conv/.bn).
    deep = bn_resnet(50, ResNetV1d).state_dict()
    state = OrderedDict()
    for key, value in deep.items():
        match = re.match(r'stem\.(\d+)\.(.*)', key)
        if match:
            index = int(match.group(1))
            part = 'conv' if index % 3 == 0 else 'bn'
            key = f'stem.{index // 3}.{part}.{match.group(2)}'
        state['backbone.' + key] = value
    converted, report = convert_resnet(state, to='ssn')
    assert report.deep_stem and ('stem.2.bn', 'stem.7') in report.renamed
    target = ResNetV1d(depth=50, norm_cfg=dict(type='SSN'))
    target.load_state_dict(converted, strict=True)
    torch.testing.assert_close(target.stem[4].running_mean,
                               deep['stem.4.running_mean'])


def test_openmmlab_v1c_layout_initialises_mmseg_resnetv1c():
    state = bn_resnet(50, ResNetV1c).state_dict()
    converted, report = convert_resnet(state)
    assert report.source_flavour == 'openmmlab' and report.deep_stem
    ResNetV1c(
        depth=50, norm_cfg=dict(type='SN')).load_state_dict(
            converted, strict=True)


def test_v1_checkpoint_against_deep_stem_backbone_is_explained():
    _, checkpoint = released()
    converted, _ = convert_resnet(extract_state_dict(checkpoint))
    with pytest.raises(
            ConversionError,
            match=r'(?s)missing 21: stem\.0\.weight.*deep 3x3 stem'):
        check_loadable(converted,
                       ResNetV1c(depth=50, norm_cfg=dict(type='SN')))
    check_loadable(converted, ResNet(depth=50, norm_cfg=dict(type='SN')))
    with pytest.raises(ConversionError, match='convert with --to ssn'):
        check_loadable(converted, ResNet(depth=50, norm_cfg=dict(type='SSN')))


# -------------------------------------------------------------- refusals
def small_bn_state():
    return OrderedDict(bn_resnet(18).state_dict())


@pytest.mark.parametrize('edit, message', [
    (lambda s: s.update({'neck.lateral_convs.0.conv.weight': torch.ones(1)}),
     r'1 keys are not part of a ResNet backbone.*neck\.lateral_convs'),
    (lambda s: s.pop('layer3.1.bn2.running_var'),
     r"layer3\.1\.bn2: incomplete norm layer, missing "
     r"\['layer3\.1\.bn2\.running_var'\]"),
    (lambda s: s.update({'layer1.0.bn1.weight': torch.ones(2, 64)}),
     r'layer1\.0\.bn1\.weight: expected a per-channel vector'),
    (lambda s: s.update({'layer1.0.bn1.extra': torch.ones(64)}),
     r"unexpected norm entries \['layer1\.0\.bn1\.extra'\]"),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith('layer4.1.')],
     r'blocks per stage \(2, 2, 2, 1\) match no ResNet depth'),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith('layer2.0.conv2')],
     r'incomplete ResNet.*layer2\.0\.conv2 \(conv\)'),
])
def test_bad_bn_checkpoints_are_refused_naming_the_key(edit, message):
    state = small_bn_state()
    edit(state)
    with pytest.raises(ConversionError, match=message):
        convert_resnet(state)


def test_foreign_checkpoints_are_refused():
    vgg = OrderedDict([('features.0.weight', torch.ones(64, 3, 3, 3)),
                       ('features.1.running_mean', torch.zeros(64)),
                       ('classifier.0.weight', torch.ones(10, 10))])
    with pytest.raises(
            ConversionError,
            match=r'3 keys are not part of a ResNet backbone'):
        convert_resnet(vgg)
    with pytest.raises(
            ConversionError,
            match='not a ResNet checkpoint with BN, SN or SSN'):
        convert_resnet({'encoder.weight': torch.ones(3)})
    with pytest.raises(ConversionError, match='expected a checkpoint dict'):
        extract_state_dict([torch.ones(1)])
    with pytest.raises(ConversionError, match="are not named tensors: 'lr'"):
        extract_state_dict({'lr': 0.1, 'w': torch.ones(1)})
    with pytest.raises(ConversionError, match="to must be one of"):
        convert_resnet(small_bn_state(), to='gn')
