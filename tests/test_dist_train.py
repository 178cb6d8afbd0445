"""End to end: 2-process CPU training of a tiny SyncSN config.

``tools/dist_train.sh`` (``python -m torch.distributed.run
--nproc_per_node 2 tools/train.py ... --launcher pytorch``) trains the tiny
DeepLabV3 of ``tests/configs/`` for 4 iterations on Cityscapes-layout data
made here, validates and saves ``iter_4.pth``; ``tools/dist_test.sh`` then
evaluates that checkpoint on 2 processes.

How the checkpoint's running statistics are checked: a probe hook (defined
below, imported by the processes through ``custom_imports``) records, on
each rank, every input that reached a SyncSN layer in training mode, the
layers' starting buffers, and the per-rank running statistics just before
``SyncNormStatsHook`` runs at the last iteration.  Here we then

* replay each SyncSN layer as a plain SN fed with both ranks' inputs
  concatenated, iteration by iteration: its running statistics are the
  statistics of the all-reduced batches, and the checkpoint must hold them;
* merge the auxiliary head's plain SN statistics of the two ranks (mean of
  the means; mean of variance + mean² minus mean²): the checkpoint must hold
  that merge, not rank 0's statistics, and both ranks must end identical.

Both tools end by destroying the process group on every rank (a gloo group
left to interpreter shutdown can abort a rank after its work is done): the
probe records, at exit, whether the group was still there.
"""
import atexit
import glob
import json
import os
import os.path as osp
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _helpers import free_port, once_per_session
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ssn_norm import SN, SyncSN
from ssn_norm.layers import SwitchableNormBase as _SwitchableNormBase
from ssn_norm.utils import unwrap_model

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason='torch.distributed with the gloo backend is not available')

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(
    REPO, 'tests', 'configs',
    'deeplabv3_r18-w16-d8-syncsn_2xb2-4_tiny-cityscapes-64x64.py')
ITERS = 4
STATS = ('running_mean', 'running_var')


def running_buffers(module: torch.nn.Module) -> dict:
    return {k: getattr(module, k).detach().clone() for k in STATS}


@HOOKS.register_module(force=True)
class DistTrainProbeHook(Hook):
    """Records what the test needs to recompute the running statistics.

    Priority HIGH: runs before SyncNormStatsHook (ABOVE_NORMAL).
    """

    priority = 'HIGH'

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.inputs, self.initial, self.kwargs = {}, {}, {}
        self.before_sync = {}

    def before_train(self, runner) -> None:
        for name, module in unwrap_model(runner.model).named_modules():
            if isinstance(module, SyncSN):
                self.inputs[name] = []
                self.initial[name] = running_buffers(module)
                self.kwargs[name] = dict(
                    num_features=module.num_features,
                    eps=module.eps,
                    momentum=module.momentum,
                    using_moving_average=module.using_moving_average)
                module.register_forward_pre_hook(partial(self._record, name))

    def after_run(self, runner) -> None:
        # atexit: after the tool's main() returned, before the interpreter
        # shuts down.
        path = osp.join(runner.work_dir, f'exit_rank{runner.rank}.json')
        atexit.register(self._record_exit, path)

    @staticmethod
    def _record_exit(path: str) -> None:
        with open(path, 'w') as f:
            json.dump(dict(group_initialized=dist.is_initialized()), f)

    def _record(self, name, module, args) -> None:
        if module.training:
            self.inputs[name].append(args[0].detach().clone())

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        if self.is_last_train_iter(runner):
            self.before_sync = self._all_stats(runner)

    def after_train(self, runner) -> None:
        torch.save(
            dict(
                inputs=self.inputs,
                initial=self.initial,
                kwargs=self.kwargs,
                before_sync=self.before_sync,
                final=self._all_stats(runner)),
            osp.join(self.out_dir, f'probe_rank{runner.rank}.pt'))

    @staticmethod
    def _all_stats(runner) -> dict:
        return {
            name: running_buffers(module)
            for name, module in unwrap_model(runner.model).named_modules()
            if isinstance(module, _SwitchableNormBase)
        }


def train_env(data_root) -> dict:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            filter(None,
                   [osp.join(REPO, 'tests'),
                    os.environ.get('PYTHONPATH')])),
        SSN_TINY_CITYSCAPES=f'{data_root}/',
        OMP_NUM_THREADS='1',
        CUDA_VISIBLE_DEVICES='')


def train(folder: Path) -> None:
    from ssn_norm.datasets.tiny_cityscapes import make_tiny_cityscapes
    make_tiny_cityscapes(
        str(folder / 'data'), num_train=8, num_val=2, size=(128, 64))
    probe = dict(type='DistTrainProbeHook', out_dir=str(folder))
    (folder / 'config.py').write_text('\n'.join([
        f'_base_ = {CONFIG!r}',
        "custom_imports = dict(imports=['ssn_norm', 'test_dist_train'])",
        f"custom_hooks = [dict(type='SyncNormStatsHook'), {probe!r}]", ''
    ]))
    run_script(
        'dist_train.sh',
        folder / 'config.py',
        2,
        '--work-dir',
        folder / 'work_dir',
        env=train_env(folder / 'data'),
        cwd=folder)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """Trains once; returns the run's folder (``config.py``, ``data``,
    ``work_dir``) and the probes of ranks 0 and 1."""
    folder = once_per_session(tmp_path_factory, 'dist_train', train)
    probes = [
        torch.load(folder / f'probe_rank{r}.pt', weights_only=False)
        for r in range(2)
    ]
    return folder, probes


def run_script(script: str, *args, env: dict, cwd) -> None:
    """Runs ``tools/<script> args`` on a free port; fails with its output."""
    env = dict(env, PORT=str(free_port()))
    proc = subprocess.run(
        ['bash', osp.join(REPO, 'tools', script)] + [str(arg) for arg in args],
        env=env,
        cwd=str(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300)
    # The root cause is in the first traceback, not in torchrun's summary;
    # a rank killed by a signal leaves its last words just before that.
    start = max(proc.stdout.find('Traceback') - 3000, 0)
    assert proc.returncode == 0, proc.stdout[start:start + 11000]


def load_checkpoint(work_dir) -> dict:
    ckpt = torch.load(
        osp.join(work_dir, f'iter_{ITERS}.pth'),
        map_location='cpu',
        weights_only=False)
    assert ckpt['meta']['iter'] == ITERS
    return ckpt['state_dict']


def train_records(work_dir) -> list:
    scalars = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    assert len(scalars) == 1
    with open(scalars[0]) as f:
        return [json.loads(line) for line in f]


def test_trains_validates_and_checkpoints(run):
    work_dir, probes = run[0] / 'work_dir', run[1]
    state = load_checkpoint(work_dir)
    assert any(k.endswith('mean_weight') for k in state)
    records = train_records(work_dir)
    assert [r['iter'] for r in records if 'loss' in r] == [1, 2, 3, 4]
    assert len([r for r in records if 'mIoU' in r]) == 1
    for probe in probes:
        assert len(probe['inputs']) > 20  # SyncSN in backbone + decode head
        for name, inputs in probe['inputs'].items():
            assert len(inputs) == ITERS, name


def group_left_at_exit(work_dir) -> list:
    """Per rank: whether the process group was still initialised when the
    tool's process exited (the probe's record)."""
    states = []
    for rank in range(2):
        with open(osp.join(work_dir, f'exit_rank{rank}.json')) as f:
            states.append(json.load(f)['group_initialized'])
    return states


def test_train_destroys_the_process_group_on_every_rank(run):
    assert group_left_at_exit(run[0] / 'work_dir') == [False, False]


def test_checkpoint_sync_sn_statistics_are_the_all_reduced_ones(run):
    work_dir, (rank0, rank1) = run[0] / 'work_dir', run[1]
    state = load_checkpoint(work_dir)
    for name, kwargs in rank0['kwargs'].items():
        ref = SN(**kwargs)
        for key, value in rank0['initial'][name].items():
            getattr(ref, key).copy_(value)
        with torch.no_grad():
            for x0, x1 in zip(rank0['inputs'][name], rank1['inputs'][name]):
                ref(torch.cat([x0, x1]))
        for key in STATS:
            torch.testing.assert_close(
                state[f'{name}.{key}'],
                getattr(ref, key),
                rtol=1e-5,
                atol=1e-6,
                msg=lambda m: f'{name}.{key}: {m}')
            # The processes agree with each other and with the checkpoint.
            assert torch.equal(rank0['final'][name][key],
                               rank1['final'][name][key])
            assert torch.equal(rank0['final'][name][key],
                               state[f'{name}.{key}'])


def test_checkpoint_plain_sn_statistics_are_merged_over_ranks(run):
    work_dir, (rank0, rank1) = run[0] / 'work_dir', run[1]
    state = load_checkpoint(work_dir)
    plain = [n for n in rank0['final'] if n not in rank0['kwargs']]
    assert plain and all(n.startswith('auxiliary_head.') for n in plain)
    for name in plain:
        stats = [p['before_sync'][name] for p in (rank0, rank1)]
        # Each rank saw other images: their statistics differ before the sync.
        assert not torch.allclose(stats[0]['running_mean'],
                                  stats[1]['running_mean'])
        means = torch.stack([s['running_mean'].double() for s in stats])
        var = torch.stack([s['running_var'].double() for s in stats])
        mean = means.mean(0)
        merged_var = (var + means.square()).mean(0) - mean.square()
        torch.testing.assert_close(
            state[f'{name}.running_mean'].double(), mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(
            state[f'{name}.running_var'].double(),
            merged_var,
            rtol=1e-6,
            atol=1e-7)
        for key in STATS:
            assert torch.equal(rank0['final'][name][key],
                               rank1['final'][name][key])
            assert torch.equal(rank0['final'][name][key],
                               state[f'{name}.{key}'])


def test_dist_test_reproduces_the_validation_of_the_checkpoint(run, tmp_path):
    """``tools/dist_test.sh`` on 2 CPU processes evaluates the checkpoint
    with the statistics validation used after the last iteration."""
    folder = run[0]
    work_dir = folder / 'work_dir'
    run_script(
        'dist_test.sh',
        folder / 'config.py',
        work_dir / f'iter_{ITERS}.pth',
        2,
        '--work-dir',
        tmp_path,
        env=train_env(folder / 'data'),
        cwd=tmp_path)
    assert group_left_at_exit(tmp_path) == [False, False]
    # <timestamp>/<timestamp>.json (tools/test.py also writes run_info.json)
    (result_file, ) = glob.glob(osp.join(tmp_path, '*', '[0-9]*_[0-9]*.json'))
    with open(result_file) as f:
        metrics = json.load(f)
    (val, ) = [r for r in train_records(work_dir) if 'mIoU' in r]
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert metrics[key] == val[key], key


EXIT_PROBE = """
import atexit, sys
from ssn_norm.compat import exit_tool

class Global:
    def __del__(self):  # runs only when the interpreter finalises
        sys.stderr.write('finalised')

keep = Global()
atexit.register(lambda: open(sys.argv[1], 'w').write('atexit ran'))
sys.stdout.write('buffered, no newline')
exit_tool(3)
"""


@pytest.mark.parametrize('world_size', ['1', '2'])
def test_exit_tool_skips_finalisation_only_in_a_distributed_launch(
        tmp_path, world_size):
    """compat workaround 8: after a distributed run the tools leave without
    finalising the interpreter (where gloo's worker threads can abort a
    finished rank); exit status, atexit handlers and output are kept."""
    marker = tmp_path / 'atexit.txt'
    env = dict(os.environ, WORLD_SIZE=world_size)
    env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
    argv = [sys.executable, '-c', EXIT_PROBE, str(marker)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == 'buffered, no newline'
    assert marker.read_text() == 'atexit ran'
    assert ('finalised' in proc.stderr) == (world_size == '1')
