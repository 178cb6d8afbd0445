"""The tools warn about the config mistakes that would pass silently."""
import warnings

import pytest
from _helpers import run_tool
from mmengine.runner import Runner

from ssn_norm.apis import (apply_train_options, build_runner, load_config,
                           swap_norm)
from ssn_norm.apis.checks import ConfigWarning, config_warnings, model_warnings

MASK_RCNN = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
DEEPLABV3 = ('mmseg::deeplabv3/'
             'deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py')
IMPORTS = ("custom_imports = dict(imports=['ssn_norm'], "
           'allow_failed_imports=False)\n')


@pytest.fixture(autouse=True)
def _data_roots(tmp_path, monkeypatch):
    """Run where the upstream configs' relative data roots exist."""
    monkeypatch.chdir(tmp_path)
    for root in ('data/coco', 'data/cityscapes'):
        (tmp_path / root).mkdir(parents=True)


def child(tmp_path, base, body, name='child.py'):
    path = tmp_path / name
    path.write_text(f'_base_ = {base!r}\n{body}')
    return str(path)


def built_warnings(config, tmp_path, training=False, launcher='none'):
    """The ConfigWarnings of building ``config``'s runner as the tools
    do; for another ``launcher`` (which this single process cannot start)
    those of checking the built model as a run of that launcher."""
    cfg = load_config(config)
    apply_train_options(cfg, config, work_dir=str(tmp_path / 'work'))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        runner = build_runner(cfg, training=training)
    messages = [
        str(w.message) for w in caught if issubclass(w.category, ConfigWarning)
    ]
    if launcher == 'none':
        return messages
    cfg.launcher = launcher
    return config_warnings(cfg) + model_warnings(cfg, runner.model, training)


@pytest.mark.parametrize(
    'base', [MASK_RCNN, DEEPLABV3], ids=['mask-rcnn', 'deeplabv3'])
def test_top_level_norm_cfg_that_reaches_no_layer(tmp_path, base):
    # The README's old snippet: valid, imports the plugin, changes nothing.
    config = child(tmp_path, base, IMPORTS + "norm_cfg = dict(type='SN')\n")
    (message, ) = built_warnings(config, tmp_path)
    assert ("sets norm_cfg=dict(type='SN') at the top level, but the built "
            'model has no SN layer (norm layers: backbone: ') in message
    assert 'A top-level norm_cfg does not reach an inherited model' in message
    assert 'tools/swap_norm.py PARENT --norm SN' in message


def test_config_without_custom_imports(tmp_path):
    config = child(tmp_path, MASK_RCNN,
                   "model = dict(backbone=dict(norm_cfg=dict(type='SN')))\n")
    (message, ) = built_warnings(config, tmp_path)
    assert ('uses ssn-norm types, SN (model.backbone.norm_cfg), but has no '
            'custom_imports of ssn_norm') in message
    assert "KeyError: 'Cannot find None in registry" in message
    assert "custom_imports = dict(imports=['ssn_norm']" in message


def test_correct_configs_are_quiet(tmp_path):
    # An upstream BN config (the tools add RngStateHook themselves) and a
    # swapped child.
    assert built_warnings(MASK_RCNN, tmp_path, training=True) == []
    swapped = str(tmp_path / 'swapped.py')
    swap_norm(MASK_RCNN, 'SSN', out=swapped)
    assert built_warnings(
        swapped, tmp_path, training=True, launcher='pytorch') == []


def test_a_hook_list_that_drops_the_recipe_hooks(tmp_path):
    swapped = str(tmp_path / 'swapped.py')
    swap_norm(MASK_RCNN, 'SSN', out=swapped)
    replaced = child(tmp_path, swapped,
                     "custom_hooks = [dict(type='CheckInvalidLossHook')]\n",
                     'replaced.py')
    messages = built_warnings(
        replaced, tmp_path, training=True, launcher='pytorch')
    assert len(messages) == 2
    assert ('53 SSN layers but custom_hooks has no SparsestMaxRadiusHook: the '
            'radius stays at 0') in messages[0]
    assert 'no SyncNormStatsHook' in messages[1]
    assert 'custom_hooks = _base_.custom_hooks + [' in messages[1]
    # Testing needs neither hook.
    assert built_warnings(replaced, tmp_path) == []
    # The documented way keeps them.
    extended = child(
        tmp_path, swapped, 'custom_hooks = _base_.custom_hooks + '
        "[dict(type='CheckInvalidLossHook')]\n", 'extended.py')
    assert built_warnings(
        extended, tmp_path, training=True, launcher='pytorch') == []


def test_train_and_test_tools_warn(tmp_path, monkeypatch):
    monkeypatch.setattr(Runner, 'train', lambda self: None)
    monkeypatch.setattr(Runner, 'test', lambda self: {})
    config = child(tmp_path, MASK_RCNN, "norm_cfg = dict(type='SSN')\n")
    checkpoint = tmp_path / 'ckpt.pth'
    checkpoint.write_bytes(b'')  # never read: Runner.test is patched
    for argv in [('train', config), ('test', config, checkpoint)]:
        with pytest.warns(ConfigWarning) as record:
            assert run_tool(*argv, '--work-dir', tmp_path / 'w') == 0
        messages = [str(w.message) for w in record]
        assert any("norm_cfg=dict(type='SSN') at the top level" in m
                   for m in messages)
        assert any('no custom_imports of ssn_norm' in m for m in messages)


def test_relative_data_root_missing_where_the_tool_runs(tmp_path, monkeypatch):
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (message, ) = built_warnings(MASK_RCNN, tmp_path)
    assert ("data_root 'data/coco/' (train_dataloader), 'data/coco/' "
            "(val_dataloader), 'data/coco/' (test_dataloader) does not "
            f'exist under the working directory {elsewhere}') in message
    assert 'docs/own_data.md' in message
