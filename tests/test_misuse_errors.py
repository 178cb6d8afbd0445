"""Bad input is refused where it enters, with a message that names it.

A bad SparsestMax radius (hook arguments, the layer's setter, the buffer,
a checkpoint), a misspelled norm type in a config, and TorchScript (trace
or script) of the layers.
"""
import math
import warnings

import pytest
import torch
from mmcv.cnn import build_norm_layer
from mmengine.registry import DefaultScope
from torch import nn

from ssn_norm import SN, SSN, SyncSN, SyncSSN
from ssn_norm.hooks import SparsestMaxRadiusHook

RANGE = r'must be a finite number >= 0'


# ------------------------------------------------------------------ radius
@pytest.mark.parametrize('name', ['start_radius', 'end_radius'])
@pytest.mark.parametrize('value', [math.nan, math.inf, -math.inf, -0.5])
def test_hook_rejects_non_finite_or_negative_radius(name, value):
    with pytest.raises(ValueError, match=rf'{name} {RANGE}.*got {value}'):
        SparsestMaxRadiusHook(**{name: value})


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(end_radius='1'), TypeError, r"end_radius must be a real number, "
     r"got '1'"),
    (dict(end_radius=True), TypeError, r'end_radius must be a real number'),
    (dict(begin=-1), ValueError, r'begin must be >= 0, got -1'),
    (dict(end=2.5), TypeError, r'end must be an int, got 2.5'),
    (dict(interval=0), ValueError, r'interval must be >= 1, got 0'),
    (dict(unfreeze_at_start='yes'), TypeError,
     r"unfreeze_at_start must be True or False, got 'yes'"),
    (dict(unfreeze_logits='zeros'), ValueError,
     r"unfreeze_logits must be one of \('uniform', 'soften'\), got 'zeros'"),
])
def test_hook_rejects_bad_argument_types(kwargs, error, match):
    with pytest.raises(error, match=match):
        SparsestMaxRadiusHook(**kwargs)


@pytest.mark.parametrize('value', [-5.0, math.nan, math.inf])
def test_set_radius_rejects_bad_values(value):
    layer = SSN(4)
    with pytest.raises(ValueError, match=rf'SSN: radius {RANGE}.*got {value}'):
        layer.set_radius(value)
    assert float(layer.radius) == 0.0  # nothing written
    with pytest.raises(TypeError, match=r'radius must be a real number'):
        layer.set_radius(torch.tensor(0.5))


@pytest.mark.parametrize('value', [-5.0, math.nan])
def test_radius_written_to_the_buffer_is_checked_before_use(value):
    """A negative radius used to act as its absolute value (sparsestmax
    squares it): -5 froze every layer for good.  NaN failed deep inside
    sparsemax."""
    layer = SSN(4).train()
    x = torch.randn(2, 4, 3, 3)
    layer(x)
    layer.radius.fill_(value)
    with pytest.raises(ValueError,
                       match=rf'the radius buffer {RANGE}.*got {value}'):
        layer(x)
    assert not layer.frozen.any()
    layer.radius.fill_(0.25)  # a valid value written the same way
    layer(x)
    assert not layer.frozen.any()


def test_radius_from_a_checkpoint_is_checked_at_load():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), SSN(4))
    state = model.state_dict()
    state['1.radius'] = torch.tensor([-5.0])
    with pytest.raises(ValueError,
                       match=rf'checkpoint entry 1.radius {RANGE}.*got -5.0'):
        model.load_state_dict(state)
    assert float(model[1].radius) == 0.0


# ---------------------------------------------------------- norm type names
@pytest.mark.parametrize('scope', ['mmseg', 'mmdet', 'mmengine'])
@pytest.mark.parametrize('typo, closest', [('SNN', 'SN'), ('ssn', 'SSN'),
                                           ('SyncSNN', 'SyncSN')])
def test_misspelled_norm_type_names_it_and_the_known_ones(scope, typo,
                                                          closest):
    with DefaultScope.overwrite_default_scope(scope):
        with pytest.raises(KeyError) as info:
            build_norm_layer(dict(type=typo), 4)
    message = str(info.value)
    assert f"unknown norm type '{typo}'" in message
    assert f"did you mean '{closest}'" in message
    assert 'Known norm types: BN, ' in message
    for name in ('GN', 'SN', 'SSN', 'SyncSN', 'SyncSSN'):
        assert f' {name},' in message or f' {name}.' in message
    assert 'Cannot find None' not in message


def test_known_norm_types_still_build():
    with DefaultScope.overwrite_default_scope('mmseg'):
        for norm_type, cls in [('SN', SN), ('SSN', SSN), ('SyncSN', SyncSN),
                               ('SyncSSN', SyncSSN), ('BN', nn.BatchNorm2d)]:
            name, layer = build_norm_layer(dict(type=norm_type), 4)
            assert type(layer) is cls and name == 'bn'
        name, layer = build_norm_layer(dict(type='GN', num_groups=2), 4)
        assert type(layer) is nn.GroupNorm and name == 'gn'


# --------------------------------------------------------------- torchscript
WORKS = (r'use the layer in eager mode, under torch.compile \(it sees plain '
         r'ops\), or export it with torch.onnx.export')


@pytest.mark.parametrize('cls', [SN, SSN, SyncSN, SyncSSN])
def test_torchscript_is_refused_naming_what_works(cls):
    model = nn.Sequential(nn.Conv2d(3, 4, 1), cls(4))
    x = torch.randn(2, 3, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torch.jit deprecation
        with pytest.raises(
                RuntimeError,
                match=rf'{cls.__name__} does not support torch.jit.script; '
                + WORKS):
            torch.jit.script(model)
        for training in (True, False):
            model.train(training)
            with pytest.raises(
                    RuntimeError,
                    match=rf'{cls.__name__} does not support torch.jit.trace'
                    + '; ' + WORKS):
                torch.jit.trace(model, x)


def test_trace_under_onnx_export_is_allowed(monkeypatch):
    """The TorchScript-based ONNX exporter traces the model: not refused."""
    layer = SN(4).eval()
    x = torch.randn(2, 4, 3, 3)
    monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        traced = torch.jit.trace(layer, x, check_trace=False)
    torch.testing.assert_close(traced(x + 1), layer(x + 1))


@pytest.mark.parametrize('value, ok', [(0.5, True), (-5.0, False),
                                       (math.nan, False), (math.inf, False)])
def test_radius_check_without_host_read(value, ok):
    """The accelerator form of the buffer check (a device-side assert;
    checked at once on the CPU, where it runs here)."""
    layer = SSN(4)
    radius = torch.tensor([value])
    if ok:
        layer._assert_radius_async(radius)
        return
    with pytest.raises(RuntimeError,
                       match=r'SSN: the radius buffer must be a finite '
                       r'number >= 0'):
        layer._assert_radius_async(radius)


def test_norm_lookup_workaround_is_idempotent_and_narrow():
    """Patching again does not wrap twice; the stand-in forwards
    everything else to mmengine's root registry."""
    from mmcv.cnn.bricks import norm
    from mmengine.registry import MODELS

    import ssn_norm.registry
    ssn_norm.compat._patch_mmcv_unknown_norm_error()
    ssn_norm.compat._patch_mmcv_unknown_norm_error()
    assert isinstance(norm.MODELS, ssn_norm.compat._NormLookup)
    assert norm.MODELS._registry is MODELS
    assert norm.MODELS.get('SN') is SN and norm.MODELS.get('SNN') is None
    assert norm.MODELS.module_dict is MODELS.module_dict
