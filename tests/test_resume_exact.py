"""Resuming after a kill repeats an uninterrupted run exactly.

mmengine checkpoints do not hold the random generators' states; a resumed
run re-seeded them, so the decode head's dropout masks after the
checkpoint differed and with them every weight and running statistic.
``RngStateHook`` (added to every config by ``apply_train_options``) saves
the states and restores them where the uninterrupted run had them.
"""
import io
import logging
import os
import os.path as osp
import random
import signal
import subprocess
import sys
import time
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _helpers import free_port, gloo_group
from mmengine.config import Config
from mmengine.hooks import CheckpointHook

from ssn_norm.apis.launch import add_rng_state_hook, apply_train_options
from ssn_norm.datasets.tiny_cityscapes import make_tiny_cityscapes
from ssn_norm.hooks import RngStateHook
from ssn_norm.hooks.rng_state_hook import (CHECKPOINT_KEY, gather_rng_states,
                                           get_rng_states, rank_rng_states,
                                           set_rng_states)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SSN_MINI = ('configs/fcn/mini/'
            'fcn-1conv_r18-d8-ssn_mini_tiny-cityscapes.py')


def _draw():
    """One draw from each global generator (numpy's Gaussian uses the
    cached second value when there is one)."""
    return (torch.rand(4).tolist(), np.random.standard_normal(3).tolist(),
            random.random(), random.gauss(0, 1))


def _seed(value):
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def test_states_restore_every_generator():
    _seed(1)
    # Leave a cached Gaussian in numpy and in python: part of the state.
    np.random.standard_normal()
    random.gauss(0, 1)
    states = get_rng_states()
    expected = _draw()
    _seed(2)
    set_rng_states(states)
    assert _draw() == expected


def test_states_load_with_weights_only():
    _seed(3)
    buffer = io.BytesIO()
    torch.save({CHECKPOINT_KEY: gather_rng_states()}, buffer)
    expected = _draw()
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)[CHECKPOINT_KEY]
    assert all(value.shape[0] == 1 for value in loaded.values())
    _seed(4)
    set_rng_states(rank_rng_states(loaded, 0, 1))
    assert _draw() == expected


def test_states_of_another_world_size_are_refused():
    gathered = {k: torch.stack([v, v]) for k, v in get_rng_states().items()}
    with pytest.raises(
            ValueError,
            match=r'saved by 2 ranks, this run has 1; resume with 2 '
            'processes'):
        rank_rng_states(gathered, 0, 1)
    assert rank_rng_states(gathered, 1, 2).keys() == gathered.keys()


def test_missing_state_is_named():
    states = get_rng_states()
    del states['numpy_keys']
    with pytest.raises(ValueError, match='random states lack numpy_keys'):
        set_rng_states(states)


def _runner(iteration, epoch=0, loop=None):
    return SimpleNamespace(
        iter=iteration,
        epoch=epoch,
        train_loop=loop,
        logger=mock.Mock(spec=logging.Logger))


def _batches():
    # A data pipeline with a random augmentation (numpy, as mmseg's).
    while True:
        yield np.random.rand()


def _saved_checkpoint(iteration):
    """Checkpoint at ``iteration`` and what an uninterrupted run draws
    next: its next batch, then a dropout mask."""
    hook = RngStateHook()
    checkpoint = dict(meta=dict(iter=iteration, epoch=0))
    hook.before_save_checkpoint(_runner(iteration), checkpoint)
    batch = next(_batches())
    mask = torch.rand(8)
    return checkpoint, batch, mask


def test_iteration_loop_restores_after_the_replayed_batches():
    """mmengine's IterBasedTrainLoop replays the trained batches after
    before_train_epoch; the states must be back right after them, before
    the first new batch is drawn."""
    _seed(5)
    checkpoint, batch, mask = _saved_checkpoint(3)
    _seed(0)  # a fresh process
    loop = SimpleNamespace(dataloader_iterator=_batches())
    plain = loop.dataloader_iterator
    runner = _runner(3, loop=loop)
    hook = RngStateHook()
    hook.after_load_checkpoint(runner, checkpoint)
    hook.before_train(runner)
    hook.before_train_epoch(runner)
    for _ in range(3):  # IterBasedTrainLoop.run replays runner.iter batches
        next(loop.dataloader_iterator)
    new_batch = next(loop.dataloader_iterator)
    hook.before_train_iter(runner, 3, new_batch)
    assert new_batch == batch
    assert torch.equal(torch.rand(8), mask)
    assert loop.dataloader_iterator is plain
    runner.logger.warning.assert_not_called()
    assert 'restored the random generator states saved at iteration 3' in \
        runner.logger.info.call_args.args[0]


def test_epoch_loop_restores_before_the_epoch():
    _seed(6)
    checkpoint, batch, mask = _saved_checkpoint(4)
    checkpoint['meta']['epoch'] = 2
    _seed(0)
    runner = _runner(4, epoch=2, loop=SimpleNamespace())
    hook = RngStateHook()
    hook.after_load_checkpoint(runner, checkpoint)
    hook.before_train(runner)
    hook.before_train_epoch(runner)
    assert next(_batches()) == batch
    assert torch.equal(torch.rand(8), mask)


def test_load_from_does_not_restore():
    """``load_from`` trains from iteration 0: the seeded start stays."""
    _seed(7)
    checkpoint, batch, _ = _saved_checkpoint(4)
    _seed(0)
    expected = next(_batches())
    _seed(0)
    runner = _runner(0, loop=SimpleNamespace())
    hook = RngStateHook()
    hook.after_load_checkpoint(runner, checkpoint)
    hook.before_train(runner)
    hook.before_train_epoch(runner)
    assert next(_batches()) == expected != batch


def test_resume_without_states_warns():
    runner = _runner(4, loop=SimpleNamespace())
    hook = RngStateHook()
    hook.after_load_checkpoint(runner, dict(meta=dict(iter=4, epoch=0)))
    hook.before_train(runner)
    message = runner.logger.warning.call_args.args[0]
    assert 'resumed at iteration 4 has no random generator states' in message


def test_validation_leaves_the_generators_alone():
    """Validation after a checkpoint, which a resumed run does not repeat,
    must not shift the random numbers of the training that follows; a
    checkpoint saved during it gets the states training continues with."""
    _seed(8)
    expected = _draw()
    _seed(8)
    hook = RngStateHook()
    runner = _runner(4)
    hook.before_val(runner)
    _draw()  # e.g. the val data loader's base seed
    best = dict(meta=dict(iter=4, epoch=0))
    hook.before_save_checkpoint(runner, best)
    _draw()
    hook.after_val(runner)
    assert _draw() == expected
    _seed(0)
    set_rng_states(rank_rng_states(best[CHECKPOINT_KEY], 0, 1))
    assert _draw() == expected


def test_train_options_add_the_hook_once():
    cfg = Config(
        dict(
            default_scope='mmseg',
            custom_hooks=[dict(type='SyncNormStatsHook')]))
    apply_train_options(cfg, 'x.py', work_dir='unused')
    assert [h['type'] for h in cfg.custom_hooks] == \
        ['SyncNormStatsHook', 'RngStateHook']
    add_rng_state_hook(cfg)
    assert [h['type'] for h in cfg.custom_hooks] == \
        ['SyncNormStatsHook', 'RngStateHook']
    bare = Config(dict(default_scope='mmseg'))
    apply_train_options(bare, 'x.py', work_dir='unused')
    assert bare.custom_hooks == [dict(type='RngStateHook')]


def _gather_worker(rank, port, out_dir):
    torch.set_num_threads(1)
    with gloo_group(rank, 2, port):
        _seed(10 + rank)
        local = get_rng_states()
        # As mmengine: every rank ends iteration 4 (index 3), at which an
        # iteration-based CheckpointHook saves; only rank 0 then runs
        # Runner.save_checkpoint and so before_save_checkpoint (a
        # collective there would hang rank 0 until the timeout).
        runner = _runner(3)
        runner.hooks = [CheckpointHook(interval=4, by_epoch=False)]
        hook = RngStateHook()
        hook.after_train_iter(runner, 3)
        result = dict(local=local)
        if rank == 0:
            checkpoint = dict(meta=dict(iter=4, epoch=0))
            hook.before_save_checkpoint(runner, checkpoint)
            result['saved'] = checkpoint[CHECKPOINT_KEY]
        torch.save(result, osp.join(out_dir, f'rank{rank}.pt'))


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason='torch.distributed with the gloo backend is not available')
def test_checkpoint_holds_every_ranks_states(tmp_path):
    """Two gloo ranks with different generator states: the checkpoint that
    rank 0 alone writes holds both, row r being rank r's."""
    mp.spawn(
        _gather_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [
        torch.load(tmp_path / f'rank{rank}.pt', weights_only=True)
        for rank in range(2)
    ]
    saved = ranks[0]['saved']
    assert 'saved' not in ranks[1]
    assert not torch.equal(ranks[0]['local']['torch'],
                           ranks[1]['local']['torch'])
    for rank, result in enumerate(ranks):
        mine = rank_rng_states(saved, rank, 2)
        assert mine.keys() == result['local'].keys()
        for key, value in result['local'].items():
            assert torch.equal(mine[key], value), (rank, key)


# ------------------------------------------------------------- end to end
CHECKPOINT_AT, ITERS = 4, 8


def _train_command(work_dir, *extra):
    return [
        sys.executable,
        'tools/train.py',
        SSN_MINI,
        '--work-dir',
        work_dir,
        *extra,
        '--cfg-options',
        f'train_cfg.max_iters={ITERS}',
        # Validation right after the checkpoint: the uninterrupted run
        # validates there, the resumed one does not.
        f'train_cfg.val_interval={CHECKPOINT_AT}',
        f'default_hooks.checkpoint.interval={CHECKPOINT_AT}'
    ]


def _load(path):
    from mmengine.runner.checkpoint import _load_checkpoint
    return _load_checkpoint(path, map_location='cpu')


def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    """The SSN Table VII mini (dropout in the decode head, random resize,
    crop and flip), SIGKILLed after its iteration-4 checkpoint and resumed
    with ``--resume``, ends at iteration 8 with every state-dict entry and
    optimizer buffer bitwise equal to an uninterrupted run's."""
    data = str(tmp_path / 'data')
    make_tiny_cityscapes(data)
    env = dict(
        os.environ,
        SSN_TINY_CITYSCAPES=data,
        OMP_NUM_THREADS='1',
        MKL_NUM_THREADS='1',
        # The eager kernels: the same numbers without compiling first.
        SSN_NORM_BACKEND='eager')

    def run(args):
        proc = subprocess.run(
            args,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc

    full = str(tmp_path / 'full')
    run(_train_command(full))

    killed = str(tmp_path / 'killed')
    marker = osp.join(killed, 'last_checkpoint')
    log = tmp_path / 'killed.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen(
            _train_command(killed),
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (osp.exists(marker) and open(marker).read().strip().endswith(
                f'iter_{CHECKPOINT_AT}.pth')):
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, 'no checkpoint in 300 s'
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not osp.exists(osp.join(killed, f'iter_{ITERS}.pth')), (
        'the run finished before it was killed')

    resumed = run(_train_command(killed, '--resume'))

    ours = _load(osp.join(killed, f'iter_{ITERS}.pth'))
    reference = _load(osp.join(full, f'iter_{ITERS}.pth'))
    assert ours['meta']['iter'] == reference['meta']['iter'] == ITERS
    state, expected = ours['state_dict'], reference['state_dict']
    assert state.keys() == expected.keys()
    differ = {
        key: float((state[key].double() - expected[key].double()).abs().max())
        for key in expected if not torch.equal(state[key], expected[key])
    }
    worst = sorted(differ.items(), key=lambda item: -item[1])[:5]
    assert not differ, f'{len(differ)} entries differ, most: {worst}'
    momenta = ours['optimizer']['state'], reference['optimizer']['state']
    assert momenta[0].keys() == momenta[1].keys()
    for key, buffers in momenta[1].items():
        for name, value in buffers.items():
            assert torch.equal(momenta[0][key][name], value), (key, name)
    assert 'RngStateHook: restored the random generator states saved at ' \
        f'iteration {CHECKPOINT_AT}' in resumed.stdout + resumed.stderr
    # The saved states load without unpickling anything but tensors.
    buffer = io.BytesIO()
    torch.save(ours[CHECKPOINT_KEY], buffer)
    buffer.seek(0)
    states = torch.load(buffer, weights_only=True)
    assert states['torch'].shape[0] == 1
