"""2-D → 3-D (I3D) inflation: exact, complete, loud on anything else.

The 2-D side is mmdet's ResNet (the torchvision key layout mmaction2's
inflation assumes and tools/convert_checkpoint.py writes); every one of its
entries gets a distinct random value so a value landing in the wrong place
or staying at its initial value shows.
"""
import functools
import warnings

import pytest
import torch
from mmdet.models.backbones import ResNet as ResNet2d
from mmengine.config import Config
from mmengine.logging import MMLogger

import ssn_norm  # noqa: F401
from ssn_norm import SN, SSN
from ssn_norm.convert.inflate_i3d import (SWITCHABLE_STATE, InflationError,
                                          ResNet3dExactInflate,
                                          inflate_state_dict, inflation_plan,
                                          load_inflated)

I3D_R50 = dict(
    depth=50,
    pretrained=None,
    conv1_kernel=(5, 7, 7),
    conv1_stride_t=2,
    pool1_stride_t=2,
    inflate=((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0)),
    zero_init_residual=False)
SN_CONFIG = ('configs/i3d/'
             'i3d_imagenet-pretrained-r50-sn_8xb8-32x2x1-100e_kinetics400-'
             'rgb.py')


def upstream_resnet3d():
    # Imported late: ``import ssn_norm`` (above, after isort's third-party
    # block) must first stub mmaction2 1.2.0's missing DRN module.
    from mmaction.models.backbones import ResNet3d
    return ResNet3d


def norm_cfg(name):
    return dict(type='GN', num_groups=32) if name == 'GN' else dict(type=name)


def random_state_dict(model, with_fc=True):
    """``model``'s state dict with a distinct random value everywhere."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith(('mean_fixed', 'var_fixed')):
            state[key] = torch.randint(0, 2, value.shape)
        elif key.endswith('num_batches_tracked'):
            state[key] = torch.randint(1, 1000, value.shape)
        elif key.endswith('running_var') or key.endswith('radius'):
            state[key] = torch.rand(value.shape) + 0.1
        else:
            state[key] = torch.randn(value.shape)
    if with_fc:  # an ImageNet classifier, as in real 2-D checkpoints
        state['fc.weight'] = torch.randn(1000, 2048)
        state['fc.bias'] = torch.randn(1000)
    return state


@functools.lru_cache()
def _resnet2d_state(norm):
    torch.manual_seed(len(norm))
    return random_state_dict(ResNet2d(depth=50, norm_cfg=norm_cfg(norm)))


def resnet2d_state(norm):
    """A random 2-D ResNet-50 state dict (a fresh dict; shared tensors)."""
    return dict(_resnet2d_state(norm))


def i3d(norm, cls=ResNet3dExactInflate, **kwargs):
    return cls(**dict(I3D_R50, norm_cfg=norm_cfg(norm), **kwargs))


def expected_source(key_3d):
    """The 2-D key of a 3-D key, written out independently of the code."""
    parts = key_3d.split('.')
    if parts[0] == 'conv1':  # stem: conv1.conv.* / conv1.bn.*
        return ('conv1.' if parts[1] == 'conv' else parts[1] + '1.') + \
            parts[-1]
    layer, block, module, sub = parts[:4]
    if module == 'downsample':
        return f'{layer}.{block}.downsample.' + \
            ('0.' if sub == 'conv' else '1.') + parts[-1]
    if sub == 'conv':
        return f'{layer}.{block}.{module}.{parts[-1]}'
    return f'{layer}.{block}.{sub}{module[len("conv"):]}.{parts[-1]}'


@pytest.mark.parametrize('norm', ['SN', 'SSN', 'GN', 'BN'])
def test_every_entry_comes_from_the_2d_checkpoint(norm):
    state_2d = resnet2d_state(norm)
    before = {k: v.clone() for k, v in state_2d.items()}
    model = i3d('BN3d' if norm == 'BN' else norm)
    state_3d, report = inflate_state_dict(state_2d, model)
    assert set(state_3d) == set(model.state_dict())
    # Every 2-D entry used exactly once, the classifier ignored.
    sources = [s for _, s in report.inflated + report.copied]
    assert sorted(sources) == sorted(
        k for k in state_2d if not k.startswith('fc.'))
    assert sorted(report.ignored) == ['fc.bias', 'fc.weight']
    assert report.kept == []
    for key, value in state_3d.items():
        source = before[expected_source(key)]
        if key.endswith('conv.weight'):
            kernel_t = value.shape[2]
            for t in range(kernel_t):
                torch.testing.assert_close(
                    value[:, :, t], source / kernel_t, rtol=0, atol=0)
            torch.testing.assert_close(value.sum(2), source)
        else:
            assert value.dtype == model.state_dict()[key].dtype
            torch.testing.assert_close(value, source, rtol=0, atol=0)
    # Pure: the input is untouched.
    for key, value in before.items():
        assert torch.equal(state_2d[key], value)


def test_switchable_state_is_carried_into_the_layers():
    state_2d = resnet2d_state('SSN')
    model = i3d('SSN')
    load_inflated(model, state_2d)
    norms = dict(model.named_modules())
    layer = norms['layer3.4.conv2.bn']
    assert isinstance(layer, SSN)
    for name in ('weight', 'bias', 'mean_weight', 'var_weight', 'running_mean',
                 'running_var', 'mean_fixed', 'var_fixed', 'radius'):
        assert torch.equal(
            getattr(layer, name), state_2d[f'layer3.4.bn2.{name}']), name
    assert torch.equal(norms['layer2.0.downsample.bn'].mean_weight,
                       state_2d['layer2.0.downsample.1.mean_weight'])
    # The ratios the 3-D layer uses are the 2-D layer's.
    layer_2d = SSN(layer.num_features)
    layer_2d.load_state_dict({
        k[len('layer3.4.bn2.'):]: v
        for k, v in state_2d.items() if k.startswith('layer3.4.bn2.')
    })
    for mine, theirs in zip(layer.ratios(), layer_2d.ratios()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def test_static_clip_gives_the_2d_response():
    """Mean inflation: identical frames → the 2-D conv's output inside."""
    state_2d = resnet2d_state('SN')
    model = i3d('SN')
    load_inflated(model, state_2d)
    frame = torch.randn(2, 3, 24, 24, dtype=torch.float64)
    clip = frame.unsqueeze(2).expand(-1, -1, 9, -1, -1)
    out_3d = torch.nn.functional.conv3d(
        clip, model.conv1.conv.weight.double(), padding=(0, 3, 3))
    out_2d = torch.nn.functional.conv2d(
        frame, state_2d['conv1.weight'].double(), padding=3)
    # The inflated weights are float32 w / kt: float32 rounding, no more.
    for t in range(out_3d.shape[2]):
        torch.testing.assert_close(out_3d[:, :, t], out_2d, rtol=0, atol=1e-5)


def refused_into_sn_i3d(state_2d, match):
    """(our SN I3D, mmaction2's own SN I3D) after checking that inflating
    ``state_2d`` into ours raises an InflationError matching ``match``."""
    model = i3d('SN')
    with pytest.raises(InflationError, match=match):
        inflate_state_dict(state_2d, model)
    return model, i3d('SN', cls=upstream_resnet3d())


def test_bn_checkpoint_into_sn_needs_an_explicit_choice():
    state_2d = resnet2d_state('BN')
    model, upstream = refused_into_sn_i3d(
        state_2d, r'3-D entries without a 2-D source: '
        r'.*conv1\.bn\.mean_weight <- bn1\.mean_weight')
    # mmaction2's own inflation fails with a bare KeyError.
    with pytest.raises(KeyError, match='bn1.mean_weight'):
        upstream._inflate_bn_params(upstream.conv1.bn, state_2d, 'bn1', [])

    init = {k: v.clone() for k, v in model.state_dict().items()}
    state_3d, report = inflate_state_dict(
        state_2d, model, allow_missing=SWITCHABLE_STATE)
    logits = sorted(
        k for k in init if k.endswith(('mean_weight', 'var_weight')))
    assert sorted(report.kept) == logits
    assert len(logits) == 2 * sum(isinstance(m, SN) for m in model.modules())
    for key in logits:  # initial (uniform) ratios
        assert torch.equal(state_3d[key], init[key])
    for key in state_3d:
        if key not in logits and not key.endswith('conv.weight'):
            assert torch.equal(state_3d[key],
                               state_2d[expected_source(key)]), key
    # BN's batch counter has no SN counterpart: ignored, and said so.
    assert 'bn1.num_batches_tracked' in report.ignored
    assert 'kept: conv1.bn.mean_weight' in report.summary()


def test_old_bn_checkpoint_without_counters_inflates():
    """Old torchvision files have no num_batches_tracked (BN3d has)."""
    state_2d = {
        k: v
        for k, v in resnet2d_state('BN').items()
        if not k.endswith('num_batches_tracked')
    }
    model = i3d('BN3d')
    _, report = inflate_state_dict(state_2d, model)
    assert report.kept and all(
        k.endswith('num_batches_tracked') for k in report.kept)


def test_shape_mismatch_is_an_error_not_a_warning():
    # A 2-D SN without BN statistics has 2 ratio logits, the 3-D one 3.
    state_2d = random_state_dict(
        ResNet2d(depth=50, norm_cfg=dict(type='SN', using_bn=False)))
    _, upstream = refused_into_sn_i3d(
        state_2d, r'shape mismatches: conv1\.bn\.mean_weight \(3,\) <- '
        r'bn1\.mean_weight \(2,\)')
    # mmaction2 warns and leaves the rest of that layer at its init.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        upstream._inflate_bn_params(upstream.conv1.bn, state_2d, 'bn1', [])
    assert any('incompatible shapes' in str(w.message) for w in caught)
    assert torch.equal(upstream.conv1.bn.mean_weight, torch.ones(3))


def test_conv_shape_mismatch_and_unused_entries_are_errors():
    state_2d = resnet2d_state('SN')
    state_2d['conv1.weight'] = torch.randn(64, 3, 3, 3)
    state_2d['layer1.0.extra.weight'] = torch.randn(3)
    with pytest.raises(InflationError) as error:
        inflate_state_dict(state_2d, i3d('SN'))
    message = str(error.value)
    assert 'conv1.conv.weight (64, 3, 5, 7, 7) <- conv1.weight (64, 3, 3, 3)' \
        in message
    assert '1 unused 2-D entries: layer1.0.extra.weight' in message


def test_ssn_checkpoint_into_sn_leaves_ssn_buffers_unused():
    model = i3d('SN')
    with pytest.raises(
            InflationError, match=r'unused 2-D entries: .*bn1\.mean_fixed'):
        inflate_state_dict(resnet2d_state('SSN'), model)
    _, report = inflate_state_dict(
        resnet2d_state('SSN'),
        model,
        ignore_unused=('fc.*', '*.mean_fixed', '*.var_fixed', '*.radius'))
    num_layers = sum(isinstance(m, SN) for m in model.modules())
    assert len(report.ignored) == 2 + 3 * num_layers


def test_prefixed_checkpoint_gets_a_hint():
    state_2d = {'backbone.' + k: v for k, v in resnet2d_state('SN').items()}
    with pytest.raises(InflationError, match="strip the prefix 'backbone.'"):
        inflate_state_dict(state_2d, i3d('SN'))


def test_plan_covers_every_entry_of_the_i3d_backbone():
    model = i3d('SSN')
    plan = inflation_plan(model)
    assert set(plan) == set(model.state_dict())
    assert plan['layer4.2.conv3.bn.radius'] == ('layer4.2.bn3.radius', 'copy')
    assert plan['layer1.0.downsample.conv.weight'] == (
        'layer1.0.downsample.0.weight', 'inflate')


@pytest.mark.parametrize('norm', ['SN', 'GN'])
def test_backbone_inflates_from_a_file_through_init_weights(tmp_path, norm):
    state_2d = resnet2d_state(norm)
    path = str(tmp_path / 'r50_2d.pth')
    torch.save({'state_dict': state_2d, 'meta': {}}, path)
    model = i3d(norm, pretrained=path)
    MMLogger.get_instance('test_video_inflate')
    model.init_weights()
    abbr = 'gn' if norm == 'GN' else 'bn'
    for key_2d, value in ((f'layer4.2.{abbr}3.weight',
                           model.layer4[2].conv3.norm.weight),
                          (f'{abbr}1.bias', model.conv1.norm.bias)):
        assert torch.equal(value, state_2d[key_2d]), key_2d
    if norm == 'GN':
        # mmaction2's ResNet3d reaches the norm as ``.bn``: GN has ``.gn``.
        upstream = i3d('GN', cls=upstream_resnet3d(), pretrained=path)
        with pytest.raises(AttributeError, match="no attribute 'bn'"):
            upstream.init_weights()


def test_missing_file_checkpoint_is_refused(tmp_path):
    path = str(tmp_path / 'not_a_state_dict.pth')
    torch.save({'state_dict': {'a': 1}}, path)
    model = i3d('SN', pretrained=path)
    with pytest.raises(InflationError, match='holds no state dict'):
        model.init_weights()


@pytest.mark.parametrize('norm', ['SN', 'GN'])
def test_zero_init_residual_reaches_any_norm(norm):
    model = i3d(norm, zero_init_residual=True)
    model.init_weights()
    for block in (model.layer1[0], model.layer4[2]):
        assert torch.count_nonzero(block.conv3.norm.weight) == 0
        assert torch.all(block.conv2.norm.weight == 1)


def test_sn_config_inflates_a_converted_checkpoint(tmp_path):
    """The real I3D-SN config, its pretrained path pointed at a file."""
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope
    state_2d = resnet2d_state('SN')
    path = str(tmp_path / 'resnet50-v1_sn-8x32_in1k.pth')
    torch.save({'state_dict': state_2d, 'meta': {}}, path)
    cfg = Config.fromfile(SN_CONFIG)
    assert cfg.model.backbone.pretrained == \
        'checkpoints/resnet50-v1_sn-8x32_in1k.pth'
    cfg.model.backbone.pretrained = path
    init_default_scope('mmaction')
    recognizer = MODELS.build(cfg.model)
    recognizer.init_weights()
    backbone = recognizer.backbone
    state_3d = backbone.state_dict()
    for key, value in state_3d.items():
        source = state_2d[expected_source(key)]
        if key.endswith('conv.weight'):
            torch.testing.assert_close(value.sum(2), source)
        else:
            assert torch.equal(value, source), key
