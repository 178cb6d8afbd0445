"""Checkpoints load without running code from them after ``import ssn_norm``.

A payload whose ``__reduce__`` creates a directory stands for any code a
pickle can run: every loading path must refuse it and leave no directory,
while checkpoints that mmengine's Runner writes still resume and load.
"""
import os
import pickle
import re

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import CheckpointLoader, Runner, load_checkpoint
from mmengine.runner.checkpoint import _load_checkpoint
from torch import nn

import ssn_norm  # noqa: F401  applies ssn_norm.compat
from ssn_norm.compat import (TRUST_CHECKPOINTS_ENV, UntrustedCheckpointError,
                             safe_load)

REFUSED = (r'refused to unpickle it: Trying to load unsupported GLOBAL '
           r'(posix|nt)\.mkdir whose module (posix|nt) is blocked\.  Only '
           r'tensors, .* set SSN_NORM_TRUST_CHECKPOINTS=1 to unpickle it in '
           r'full')


@pytest.fixture(autouse=True)
def untrusted(monkeypatch):
    """No opt-in from the environment the tests run in."""
    monkeypatch.delenv(TRUST_CHECKPOINTS_ENV, raising=False)


class Payload:
    """Unpickling it calls ``os.mkdir(path)``: code from the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path, )


class Pickled:
    """Unpickles as ``func(*args)``, for crafting pickles."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class Tiny(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x, y, mode='loss'):
        out = self.linear(x)
        if mode == 'loss':
            return {'loss': ((out - y)**2).mean()}
        return [out]


class Points(torch.utils.data.Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        return dict(
            x=torch.randn(2, generator=generator),
            y=torch.randn(1, generator=generator))


def runner(work_dir, max_iters=3, **kwargs):
    return Runner(
        model=Tiny(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=Points(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate'),
            batch_size=2),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=dict(
            type='MultiStepLR', milestones=[2], by_epoch=False),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=3,
                            by_epoch=False)),
        randomness=dict(seed=0),
        default_scope='mmengine',
        **kwargs)


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    """A checkpoint written by mmengine's Runner after 3 iterations."""
    work_dir = tmp_path_factory.mktemp('train')
    runner(work_dir).train()
    return str(work_dir / 'iter_3.pth')


def malicious(tmp_path):
    marker = tmp_path / 'pwned'
    path = str(tmp_path / 'evil.pth')
    torch.save(
        {
            'state_dict': Tiny().state_dict(),
            'meta': {
                'note': Payload(marker)
            }
        }, path)
    return path, marker


def test_mmengine_loaders_refuse_code(tmp_path):
    path, marker = malicious(tmp_path)
    loaders = {
        'CheckpointLoader': lambda: CheckpointLoader.load_checkpoint(path),
        '_load_checkpoint': lambda: _load_checkpoint(path, 'cpu'),
        'load_checkpoint': lambda: load_checkpoint(Tiny(), path),
    }
    for name, load in loaders.items():
        with pytest.raises(UntrustedCheckpointError) as info:
            load()
        assert re.search(f'^{re.escape(path)}: {REFUSED}',
                         str(info.value)), (name, str(info.value))
        assert not marker.exists(), name


def test_other_objects_are_named(tmp_path):
    path = str(tmp_path / 'module.pth')
    torch.save({'state_dict': {}, 'meta': {'model': nn.ReLU()}}, path)
    with pytest.raises(
            UntrustedCheckpointError,
            match=r'module.pth: refused to unpickle it: Unsupported global: '
            r'GLOBAL torch.nn.modules.activation.ReLU was not an allowed '
            r'global by default\.  Only tensors'):
        CheckpointLoader.load_checkpoint(path)


def test_runner_load_from_refuses_code(tmp_path):
    path, marker = malicious(tmp_path)
    for resume in (False, True):
        run = runner(tmp_path / f'wd{resume}', load_from=path, resume=resume)
        with pytest.raises(UntrustedCheckpointError, match=REFUSED):
            run.train()
        assert not marker.exists()


def test_runner_checkpoint_resumes(runner_checkpoint, tmp_path):
    methods = dict(HistoryBuffer._statistics_methods)
    saved = torch.load(runner_checkpoint, weights_only=False)
    run = runner(
        tmp_path, max_iters=4, load_from=runner_checkpoint, resume=True)
    run.train()
    # 3 iterations from the file, 1 more here: the loop and the message
    # hub's HistoryBuffers came back from the checkpoint.
    assert run.iter == 4
    loss = run.message_hub.get_scalar('train/loss')
    assert isinstance(loss, HistoryBuffer) and len(loss.data[0]) == 4
    np.testing.assert_array_equal(
        loss.data[0][:3],
        saved['message_hub']['log_scalars']['train/loss'].data[0])
    assert HistoryBuffer._statistics_methods == methods


def test_runner_checkpoint_loads_as_load_from(runner_checkpoint, tmp_path):
    saved = torch.load(runner_checkpoint, weights_only=False)
    run = runner(tmp_path, load_from=runner_checkpoint)
    run.load_or_resume()
    for key, value in run.model.state_dict().items():
        torch.testing.assert_close(value, saved['state_dict'][key], msg=key)
    loaded = safe_load(runner_checkpoint, map_location='cpu')
    assert loaded['meta']['seed'] == 0 and loaded['meta']['iter'] == 3
    hub = loaded['message_hub']['log_scalars']
    np.testing.assert_array_equal(
        hub['train/lr'].data[0],
        saved['message_hub']['log_scalars']['train/lr'].data[0])


def test_allow_list_is_per_call(runner_checkpoint):
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([np.dtype])
    try:
        safe_load(runner_checkpoint)
        # The user's own entry survives; ours are gone again.
        after = torch.serialization.get_safe_globals()
        assert np.dtype in after and HistoryBuffer not in after
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)
    with pytest.raises(
            pickle.UnpicklingError,
            match='GLOBAL mmengine.'
            'logging.history_buffer.HistoryBuffer was not an '
            'allowed global'):
        torch.load(runner_checkpoint, weights_only=True)


def test_getattr_resolves_only_history_buffer_statistics(tmp_path):
    path = str(tmp_path / 'getattr.pth')
    torch.save({'x': Pickled(getattr, HistoryBuffer, 'update')}, path)
    with pytest.raises(
            UntrustedCheckpointError,
            match=r"refused getattr\(<class 'mmengine.logging.history_buffer."
            r"HistoryBuffer'>, 'update'\) while unpickling: only "
            r'HistoryBuffer.\{min, max, current, mean\} are allowed'):
        safe_load(path)


def test_history_buffer_cannot_replace_statistics(tmp_path, monkeypatch):
    HistoryBuffer()  # registers the default statistics
    methods = dict(HistoryBuffer._statistics_methods)
    path = str(tmp_path / 'stats.pth')
    buffer = HistoryBuffer([1.0], [1])
    # Saved state maps 'mean' to HistoryBuffer.max: allowed objects, but
    # loading would change every HistoryBuffer's mean in the process.
    monkeypatch.setitem(HistoryBuffer._statistics_methods, 'mean',
                        HistoryBuffer.max)
    torch.save({'hub': buffer}, path)
    monkeypatch.undo()
    with pytest.raises(
            UntrustedCheckpointError,
            match=r"a HistoryBuffer would register <function HistoryBuffer"
            r".max at .*> as its 'mean' statistic"):
        safe_load(path)
    assert HistoryBuffer._statistics_methods == methods


def test_opt_in_loads_in_full(tmp_path, monkeypatch):
    path, marker = malicious(tmp_path)
    monkeypatch.setenv(TRUST_CHECKPOINTS_ENV, '1')
    with pytest.warns(UserWarning, match='unpickling .* in full'):
        CheckpointLoader.load_checkpoint(path)
    assert marker.is_dir()


def test_bad_opt_in_value_is_named(tmp_path, monkeypatch):
    path, marker = malicious(tmp_path)
    monkeypatch.setenv(TRUST_CHECKPOINTS_ENV, 'yes')
    with pytest.raises(
            ValueError,
            match=r"SSN_NORM_TRUST_CHECKPOINTS='yes': expected 1 .* or 0 / "
            r'unset'):
        CheckpointLoader.load_checkpoint(path)
    assert not marker.exists()


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / 'notes.txt'
    path.write_text('hello')
    with pytest.raises(
            ValueError,
            match=r"notes.txt: not a PyTorch checkpoint \(neither a "
            r"zip-based torch.save file nor a legacy torch pickle; it "
            r"starts with b'hello'\)"):
        CheckpointLoader.load_checkpoint(str(path))


def test_legacy_format_still_loads(tmp_path):
    path = str(tmp_path / 'legacy.pth')
    state = {'w': torch.arange(3.), 'seed': np.int64(5)}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    loaded = CheckpointLoader.load_checkpoint(path)
    torch.testing.assert_close(loaded['w'], state['w'])
    assert loaded['seed'] == 5
