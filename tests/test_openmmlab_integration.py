"""The layers inside mmcv, mmdet, mmseg and mmaction2.

Besides building from every toolbox scope, these tests pin the design
decisions that upstream code silently depends on: the ``bn`` attribute name,
not being a ``_BatchNorm`` (so mmengine never converts or fuses SN), and the
two ``isinstance(_BatchNorm)`` traps a config has to handle explicitly
(``norm_eval`` and ``norm_decay_mult``).
"""
import io
import os.path as osp

import pytest
import torch
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.config import Config
from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import ssn_norm
from ssn_norm import SN, SSN, SyncSN, SyncSSN

LAYERS = {'SN': SN, 'SSN': SSN, 'SyncSN': SyncSN, 'SyncSSN': SyncSSN}
SCOPES = ('mmdet', 'mmseg', 'mmaction')
BASE_CFG = osp.join(
    osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs', '_base_',
    'switchable_norm.py')


@pytest.mark.parametrize('scope', SCOPES)
@pytest.mark.parametrize('name', sorted(LAYERS))
def test_build_norm_layer_from_every_scope(scope, name):
    with DefaultScope.overwrite_default_scope(scope):
        attr, layer = build_norm_layer(
            dict(type=name, momentum=0.03, requires_grad=False), 16, '1')
    assert type(layer) is LAYERS[name]
    assert attr == 'bn1'
    assert layer.num_features == 16
    assert layer.eps == 1e-5 and layer.momentum == 0.03
    assert not any(p.requires_grad for p in layer.parameters())


@pytest.mark.parametrize('scope', SCOPES)
def test_registered_in_the_root_registry_seen_by_each_scope(scope):
    from mmengine.registry import MODELS
    for name, cls in LAYERS.items():
        assert MODELS.get(name) is cls
    # The toolbox's own registry (not a fallback to the root) finds them.
    with MODELS.switch_scope_and_registry(scope) as registry:
        assert registry is not MODELS and registry.scope == scope
        for name, cls in LAYERS.items():
            assert registry.get(name) is cls
            assert name not in registry.module_dict  # inherited from root


@pytest.mark.parametrize('name', sorted(LAYERS))
def test_unknown_option_is_named(name):
    with pytest.raises(
            TypeError, match="unexpected keyword argument "
            "'using_BN'"):
        build_norm_layer(dict(type=name, using_BN=False), 8)


@pytest.mark.parametrize('name', sorted(LAYERS))
def test_state_dict_round_trip(name):
    _, source = build_norm_layer(dict(type=name), 4)
    with torch.no_grad():
        for param in source.parameters():
            param.normal_()
    if isinstance(source, SSN):
        source.radius.fill_(0.3)
    for _ in range(2):
        source(torch.randn(2, 4, 3, 3))
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    _, target = build_norm_layer(dict(type=name), 4)
    target.load_state_dict(torch.load(buffer))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    source.eval()
    target.eval()
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(target(x), source(x))


# ---------------------------------------------------------------- design pins
@pytest.mark.parametrize('cls', list(LAYERS.values()))
def test_not_a_batchnorm_and_named_bn(cls):
    assert not issubclass(cls, _BatchNorm)
    assert cls._abbr_ == 'bn'


def test_mmengine_never_converts_or_reverts_switchable_norms():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), SN(4), nn.BatchNorm2d(4), SyncSN(4))
    converted = convert_sync_batchnorm(model)
    assert type(converted[1]) is SN
    assert type(converted[2]) is nn.SyncBatchNorm
    assert type(converted[3]) is SyncSN
    reverted = revert_sync_batchnorm(model)
    assert type(reverted[1]) is SN and type(reverted[3]) is SyncSN


def _mmdet_resnet(norm_type, norm_eval):
    from mmdet.models.backbones import ResNet
    return ResNet(
        depth=18,
        num_stages=2,
        out_indices=(1, ),
        strides=(1, 2),
        dilations=(1, 1),
        base_channels=8,
        norm_cfg=dict(type=norm_type, requires_grad=True),
        norm_eval=norm_eval)


def test_mmdet_resnet_names_and_bn_checkpoint_keys():
    sn_model = _mmdet_resnet('SN', norm_eval=False)
    assert type(sn_model.bn1) is SN
    assert type(sn_model.layer1[0].bn2) is SN
    bn_model = _mmdet_resnet('BN', norm_eval=False)
    with torch.no_grad():
        for buf in bn_model.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    # A BN checkpoint loads into the SN backbone without renaming: only the
    # ratio logits are missing and only BN's batch counters are left over.
    result = sn_model.load_state_dict(bn_model.state_dict(), strict=False)
    assert result.missing_keys and all(
        key.endswith(('mean_weight', 'var_weight'))
        for key in result.missing_keys)
    assert result.unexpected_keys and all(
        key.endswith('num_batches_tracked') for key in result.unexpected_keys)
    assert torch.equal(sn_model.layer1[0].bn1.running_var,
                       bn_model.layer1[0].bn1.running_var)


def test_norm_eval_trap_leaves_switchable_norms_training():
    """``norm_eval=True`` only freezes ``_BatchNorm``.

    mmdet's Mask/Faster R-CNN bases set it; SN configs must set
    ``norm_eval=False`` explicitly (see docs/switchable_norms.md).
    """
    sn_model = _mmdet_resnet('SN', norm_eval=True)
    sn_model.train()
    norms = [m for m in sn_model.modules() if isinstance(m, SN)]
    assert norms and all(m.training for m in norms)
    bn_model = _mmdet_resnet('BN', norm_eval=True)
    bn_model.train()
    bns = [m for m in bn_model.modules() if isinstance(m, _BatchNorm)]
    assert bns and not any(m.training for m in bns)


def test_paramwise_cfg_trap_and_recipe():
    """``norm_decay_mult`` skips SN; ``custom_keys`` on the logits works."""
    cfg = Config.fromfile(BASE_CFG)
    assert cfg.custom_imports == dict(
        imports=['ssn_norm'], allow_failed_imports=False)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SN(4), nn.BatchNorm2d(4))
    paramwise_cfg = dict(norm_decay_mult=0., **cfg.sn_paramwise_cfg)
    optim_wrapper = build_optim_wrapper(
        model,
        dict(
            optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4),
            paramwise_cfg=paramwise_cfg))
    decay = {
        id(p): group['weight_decay']
        for group in optim_wrapper.optimizer.param_groups
        for p in group['params']
    }
    assert decay[id(model[1].mean_weight)] == 0
    assert decay[id(model[1].var_weight)] == 0
    assert decay[id(model[2].weight)] == 0  # a _BatchNorm: norm_decay_mult
    assert decay[id(model[1].weight)] == 1e-4  # SN: not seen as a norm

    optim_wrapper = build_optim_wrapper(
        model,
        dict(
            type='RatioClipOptimWrapper',
            constructor='SwitchableOptimWrapperConstructor',
            optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4),
            paramwise_cfg=cfg.ssn_paramwise_cfg))
    groups = {
        id(p): group
        for group in optim_wrapper.optimizer.param_groups
        for p in group['params']
    }
    for param in (model[1].mean_weight, model[1].var_weight):
        assert groups[id(param)]['weight_decay'] == 0
        assert groups[id(param)]['lr'] == pytest.approx(0.01)
    assert groups[id(model[1].weight)]['lr'] == 0.1


def test_mmseg_convmodule_and_aspp_image_pool():
    from mmseg.models.decode_heads import ASPPHead
    conv = ConvModule(3, 4, 3, norm_cfg=dict(type='SN'))
    assert type(conv.bn) is SN and conv.norm_name == 'bn'
    # The image-pool branch normalises a 1x1 map; it must stay finite.
    head = ASPPHead(
        in_channels=8,
        channels=4,
        dilations=(1, 2),
        num_classes=3,
        norm_cfg=dict(type='SSN'))
    assert type(head.image_pool[1].bn) is SSN
    head.train()
    out = head([torch.randn(2, 8, 6, 6)])
    out.square().mean().backward()
    assert out.shape == (2, 3, 6, 6) and torch.isfinite(out).all()
    assert all(
        torch.isfinite(p.grad).all() for p in head.parameters()
        if p.grad is not None)


def test_mmaction_resnet3d_finds_bn_for_zero_init():
    from mmaction.models.backbones import ResNet3d
    model = ResNet3d(
        depth=18,
        pretrained=None,
        pretrained2d=False,
        base_channels=8,
        num_stages=2,
        out_indices=(1, ),
        spatial_strides=(1, 2),
        temporal_strides=(1, 1),
        dilations=(1, 1),
        norm_cfg=dict(type='SN'))
    model.init_weights()
    assert type(model.conv1.bn) is SN
    assert torch.equal(model.conv1.bn.weight, torch.ones(8))
    # zero_init_residual reached the last norm of every block via `.bn`.
    for layer in (model.layer1, model.layer2):
        for block in layer:
            assert type(block.conv2.bn) is SN
            assert torch.equal(block.conv2.bn.weight,
                               torch.zeros_like(block.conv2.bn.weight))
    out = model(torch.randn(1, 3, 2, 16, 16))
    assert torch.isfinite(out).all()


def test_import_registers_idempotently():
    from mmengine.registry import MODELS
    ssn_norm.registry.register_all()
    ssn_norm.compat.apply_all()
    assert MODELS.get('SSN') is SSN


@pytest.mark.parametrize('rank', [0, 1])
def test_test_metrics_file_is_written_by_the_main_process_only(
        rank, tmp_path, monkeypatch):
    """Every rank of a distributed test used to write the same metrics
    JSON concurrently (invalid JSON on a race); now only rank 0 writes."""
    import json
    from types import SimpleNamespace

    from mmengine.dist import utils as dist_utils
    from mmengine.hooks import LoggerHook

    monkeypatch.setattr(dist_utils, 'get_rank', lambda group=None: rank)
    tag = {'mIoU': 12.5, 'time': 0.25}
    runner = SimpleNamespace(
        log_processor=SimpleNamespace(
            get_log_after_epoch=lambda *args, **kwargs: (tag, 'log line')),
        test_dataloader=[None] * 3,
        logger=SimpleNamespace(info=lambda msg: None),
        log_dir=str(tmp_path))
    hook = LoggerHook()
    hook.json_log_path = 'metrics.json'
    hook.after_test_epoch(runner)
    written = tmp_path / 'metrics.json'
    if rank == 0:
        assert json.loads(written.read_text()) == tag
    else:
        assert not written.exists()


def test_config_formatting_is_memoized_and_unchanged(monkeypatch):
    """A Runner pretty-prints one config text about five times: yapf runs
    once per text, and the text is yapf's own."""
    import mmengine.config.config as mmengine_config
    from yapf.yapflib.yapf_api import FormatCode

    from ssn_norm.compat import memoized_format_code
    assert mmengine_config.FormatCode._ssn_norm_memoized
    calls = []

    def counting(text, style_config=None, **options):
        calls.append(text)
        return FormatCode(text, style_config=style_config, **options)

    monkeypatch.setattr(mmengine_config, 'FormatCode',
                        memoized_format_code(counting))
    cfg = Config(dict(model=dict(type='X', layers=[1, 2, 3]), lr=0.1))
    texts = {cfg.pretty_text for _ in range(5)}
    other = Config(dict(lr=0.2)).pretty_text
    assert len(calls) == 2 and len(texts) == 1
    monkeypatch.setattr(mmengine_config, 'FormatCode', FormatCode)
    assert texts == {cfg.pretty_text} and other == Config(
        dict(lr=0.2)).pretty_text
