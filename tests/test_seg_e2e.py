"""End to end: the segmentation mini configs train with tools/train.py and
tools/test.py evaluates them, on tiny Cityscapes-layout data made here.

Each tool runs as a subprocess, exactly as a user runs it.
"""
import glob
import json
import math
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from ssn_norm.analysis import gather
from ssn_norm.datasets.tiny_cityscapes import make_tiny_cityscapes

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MINI = {
    'fcn-1conv-sn':
    'configs/fcn/mini/fcn-1conv_r18-d8-sn_mini_tiny-cityscapes.py',
    'pspnet-sn':
    'configs/pspnet/mini/pspnet_r18-d8-sn_mini_tiny-cityscapes.py',
    'fcn-1conv-ssn':
    'configs/fcn/mini/fcn-1conv_r18-d8-ssn_mini_tiny-cityscapes.py',
    'fcn-1conv-gsn2':
    'configs/fcn/mini/fcn-1conv_r18-d8-gsn2_mini_tiny-cityscapes.py',
}
USER_CHILD = 'configs/fcn/mini/fcn-1conv_r18-d8-sn_mini_my-cityscapes.py'


@pytest.fixture(scope='module')
def tiny_cityscapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('tiny_cityscapes')
    make_tiny_cityscapes(str(root))
    return str(root)


def run_tool(args, cwd=REPO, data_root=None):
    env = dict(os.environ)
    env.pop('SSN_TINY_CITYSCAPES', None)
    if data_root is not None:
        env['SSN_TINY_CITYSCAPES'] = data_root
    # As many threads as the in-process tests (tests/conftest.py).
    threads = env.get('SSN_TEST_THREADS', '1')
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    proc = subprocess.run(
        [sys.executable] + args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600)
    assert proc.returncode == 0, (
        f'{" ".join(args)} failed:\n{proc.stdout[-3000:]}\n'
        f'{proc.stderr[-5000:]}')
    return proc


def scalars(work_dir):
    (path, ) = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        return [json.loads(line) for line in f]


def read_test_json(work_dir):
    (path, ) = [
        p for p in glob.glob(osp.join(work_dir, '*', '*.json'))
        if osp.basename(p) == osp.basename(osp.dirname(p)) + '.json'
    ]
    with open(path) as f:
        return json.load(f)


def train_and_test(config, work_dir, data_root, iters, extra=()):
    run_tool([
        'tools/train.py', config, '--work-dir', work_dir, '--cfg-options',
        f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
        'default_hooks.logger.interval=1', *extra
    ],
             data_root=data_root)
    entries = scalars(work_dir)
    losses = [e['loss'] for e in entries if 'loss' in e]
    assert len(losses) == iters
    assert all(math.isfinite(loss) for loss in losses)
    checkpoint = osp.join(work_dir, f'iter_{iters}.pth')
    assert osp.isfile(checkpoint)
    test_dir = osp.join(work_dir, 'test')
    run_tool(['tools/test.py', config, checkpoint, '--work-dir', test_dir],
             data_root=data_root)
    metrics = read_test_json(test_dir)
    assert set(metrics) >= {'aAcc', 'mIoU', 'mAcc'}
    return entries, metrics, checkpoint


def test_fcn_1conv_sn_learns_the_tiny_scenes(tiny_cityscapes, tmp_path):
    """60 iterations already segment the scenes far above chance (six of
    Cityscapes' 19 classes are present; predicting the most frequent one
    everywhere scores 6.5 mIoU).  ``tools/test.py --tta`` evaluates the
    same checkpoint with the config's multi-scale recipe, and the
    leaderboard tells the two tests in one work directory apart by the run
    info the tool writes."""
    entries, metrics, checkpoint = train_and_test(MINI['fcn-1conv-sn'],
                                                  str(tmp_path),
                                                  tiny_cityscapes, 60)
    assert metrics['mIoU'] > 40, metrics
    # Validation at the end of training saw the same data.
    val = [e for e in entries if 'mIoU' in e]
    assert len(val) == 1 and val[0]['mIoU'] == pytest.approx(
        metrics['mIoU'], abs=0.01)

    test_dir = str(tmp_path / 'test')  # where train_and_test tested
    run_tool([
        'tools/test.py', MINI['fcn-1conv-sn'], checkpoint, '--work-dir',
        test_dir, '--tta'
    ],
             data_root=tiny_cityscapes)
    infos = []
    for path in sorted(glob.glob(osp.join(test_dir, '*', 'run_info.json'))):
        with open(path) as f:
            infos.append(json.load(f))
    assert [(i['tta'], i['model'])
            for i in infos] == [(False, 'EncoderDecoder'),
                                (True, 'SegTTAModel')]
    (table, ) = gather([test_dir]).tables
    (row, ) = table.rows
    assert [run.multi_scale for run in row.runs] == [False, True]
    assert row.values['mIoU'] == pytest.approx(metrics['mIoU'], abs=1e-6)
    # A checkpoint that did not load into SegTTAModel's module would score
    # like an untrained model.
    assert row.values['mIoU(ms)'] > 40
    check_batch_average_test(entries, metrics, checkpoint, tmp_path,
                             tiny_cityscapes)


def check_batch_average_test(entries, metrics, checkpoint, tmp_path,
                             data_root):
    """The SN rows test with batch-average statistics (the SN paper's
    "BN uses batch average after training"): the last checkpoint holds
    them, the final validation and ``tools/test.py`` report them, and the
    test result moves when they move."""
    saved = torch.load(checkpoint, map_location='cpu', weights_only=False)
    info = saved['meta']['batch_stats']
    # The loader's 2 batches of 4: all 8 training images once.
    assert (info['num_batches'], info['samples']) == (2, 8)
    keys = [k for k in saved['state_dict'] if k.endswith('.running_var')]
    assert keys and set(info['moving_average']) == {
        k[:-len('var')] + s
        for k in keys
        for s in ('var', 'mean')
    }
    changed = [
        k for k in keys
        if not torch.equal(saved['state_dict'][k], info['moving_average'][k])
    ]
    assert changed == keys  # every layer's statistics were replaced
    val = [e for e in entries if 'mIoU' in e]
    assert val[-1]['batch_stats_samples'] == 8
    assert metrics['batch_stats_samples'] == 8

    # The same checkpoint with other "batch averages": another result.
    for key in keys:
        saved['state_dict'][key] *= 100
        mean = key[:-len('var')] + 'mean'
        saved['state_dict'][mean] += 10
    moved = str(tmp_path / 'moved.pth')
    torch.save(saved, moved)
    moved_dir = str(tmp_path / 'test-moved')
    run_tool([
        'tools/test.py', MINI['fcn-1conv-sn'], moved, '--work-dir', moved_dir
    ],
             data_root=data_root)
    moved_metrics = read_test_json(moved_dir)
    assert moved_metrics['batch_stats_samples'] == 8
    assert (moved_metrics['aAcc'], moved_metrics['mIoU']) != (metrics['aAcc'],
                                                              metrics['mIoU'])

    # Moving averages, one option away: the ones saved in the checkpoint.
    moving_dir = str(tmp_path / 'test-moving')
    run_tool([
        'tools/test.py', MINI['fcn-1conv-sn'], checkpoint, '--work-dir',
        moving_dir, '--cfg-options',
        'default_hooks.batch_stats.statistics=moving_average'
    ],
             data_root=data_root)
    assert read_test_json(moving_dir)['batch_stats_samples'] == 0


def test_pspnet_sn_trains_and_evaluates(tiny_cityscapes, tmp_path):
    _, metrics, checkpoint = train_and_test(MINI['pspnet-sn'], str(tmp_path),
                                            tiny_cityscapes, 4)
    assert 0 <= metrics['mIoU'] <= 100
    state = torch.load(
        checkpoint, map_location='cpu', weights_only=False)['state_dict']
    # SN in the pool-scale-1 branch and the auxiliary head, trained.
    assert 'decode_head.psp_modules.0.1.bn.mean_weight' in state
    assert 'auxiliary_head.convs.0.bn.var_weight' in state
    assert all(
        torch.isfinite(v).all() for v in state.values()
        if v.is_floating_point())


def test_fcn_1conv_ssn_trains_and_evaluates(tiny_cityscapes, tmp_path):
    iters = 6
    entries, metrics, checkpoint = train_and_test(
        MINI['fcn-1conv-ssn'], str(tmp_path), tiny_cityscapes, iters,
        ['custom_hooks.0.interval=1'])
    assert 0 <= metrics['mIoU'] <= 100
    # The radius hook of the real SSN config ran: 0 -> 1 over the run.
    radii = [e['ssn_radius'] for e in entries if 'ssn_radius' in e]
    assert radii == pytest.approx([i / iters for i in range(iters)])
    grad_norms = [
        e['ratio_grad_norm'] for e in entries if 'ratio_grad_norm' in e
    ]
    assert grad_norms and all(math.isfinite(g) for g in grad_norms)
    state = torch.load(
        checkpoint, map_location='cpu', weights_only=False)['state_dict']
    assert float(state['decode_head.convs.0.bn.radius']) == \
        pytest.approx(radii[-1])


def test_fcn_1conv_group_sn_trains_and_evaluates(tiny_cityscapes, tmp_path):
    """Ours: group SN (two channel groups) in backbone and heads."""
    _, metrics, checkpoint = train_and_test(MINI['fcn-1conv-gsn2'],
                                            str(tmp_path), tiny_cityscapes, 4)
    assert 0 <= metrics['mIoU'] <= 100
    state = torch.load(
        checkpoint, map_location='cpu', weights_only=False)['state_dict']
    # One row of ratio logits per channel group, trained apart.
    for prefix in ('backbone.layer4.1.bn2', 'decode_head.convs.0.bn',
                   'auxiliary_head.convs.0.bn'):
        logits = state[prefix + '.mean_weight']
        assert logits.shape == (2, 3)
        assert torch.isfinite(logits).all()
        assert state[prefix + '.running_mean'].abs().sum() > 0
    # (Where the residual branch starts at zero, mmseg's zero_init_residual,
    # a block's logits barely move in 4 iterations; the heads' do.)
    for prefix in ('decode_head.convs.0.bn', 'auxiliary_head.convs.0.bn'):
        logits = state[prefix + '.mean_weight']
        assert not torch.equal(logits[0], logits[1]), prefix


def test_child_overriding_data_paths_trains_on_a_user_folder(tmp_path):
    """The shipped example child, run from a folder holding the user's data
    (other image size and cities) and not the tiny default data."""
    make_tiny_cityscapes(
        str(tmp_path / 'data' / 'my_cityscapes'),
        num_train=4,
        num_val=2,
        size=(320, 160),
        train_cities=('lindau', ),
        val_cities=('munster', ),
        seed=3)
    work_dir = str(tmp_path / 'work')
    run_tool([
        osp.join(REPO, 'tools/train.py'),
        osp.join(REPO, USER_CHILD), '--work-dir', work_dir, '--cfg-options',
        'train_cfg.max_iters=2', 'train_cfg.val_interval=2'
    ],
             cwd=str(tmp_path))
    entries = scalars(work_dir)
    assert all(math.isfinite(e['loss']) for e in entries if 'loss' in e)
    (val, ) = [e for e in entries if 'mIoU' in e]
    assert 0 <= val['mIoU'] <= 100
    assert not (tmp_path / 'data' / 'tiny_cityscapes').exists()
