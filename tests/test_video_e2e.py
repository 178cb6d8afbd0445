"""End to end on CPU: the I3D-SN and I3D-SSN mini configs train a few
iterations through ``tools/train.py`` on tiny Kinetics-layout videos made
here, and ``tools/test.py`` evaluates the checkpoint (multi-clip testing)."""
import glob
import json
import math
import os.path as osp
import subprocess
import sys

import pytest
import torch

from ssn_norm.datasets.tiny_kinetics import make_tiny_kinetics

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MINI = osp.join(ROOT, 'configs', 'i3d', 'mini')
NUM_TRAIN, BATCH, EPOCHS = 16, 8, 2
ITERS = NUM_TRAIN // BATCH * EPOCHS


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('tiny_kinetics')
    make_tiny_kinetics(
        str(root), num_train=NUM_TRAIN, num_val=8, rawframes=False, seed=1)
    return str(root)


def data_options(root):
    return [
        f'{split}_dataloader.dataset.data_root={root}'
        for split in ('train', 'val', 'test')
    ]


def run_tool(tool, *args):
    result = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', tool), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600)
    assert result.returncode == 0, (
        result.stdout[-3000:] + result.stderr[-3000:])
    return result


def json_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize('norm', ['sn', 'ssn'])
def test_mini_config_trains_and_tests(tmp_path, data_root, norm):
    config = osp.join(MINI, f'i3d_r18-{norm}_mini_tiny-kinetics.py')
    work_dir = str(tmp_path / 'train')
    run_tool('train.py', config, '--work-dir', work_dir, '--cfg-options',
             *data_options(data_root), f'train_cfg.max_epochs={EPOCHS}',
             f'train_cfg.val_begin={EPOCHS}',
             'default_hooks.logger.interval=1')

    # Training: finite losses at every logged iteration, a validation.
    scalars = json_lines(
        glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))[0])
    losses = [entry['loss'] for entry in scalars if 'loss' in entry]
    assert len(losses) == ITERS
    assert all(math.isfinite(loss) for loss in losses)
    assert any('acc/top1' in entry for entry in scalars)

    # The checkpoint holds trained SN/SSN state under mmaction's names.
    checkpoint = osp.join(work_dir, f'epoch_{EPOCHS}.pth')
    state = torch.load(
        checkpoint, map_location='cpu', weights_only=False)['state_dict']
    logits = state['backbone.layer1.0.conv1.bn.mean_weight']
    assert logits.shape == (3, )
    assert not torch.equal(logits, torch.ones(3))  # trained from init
    assert 'backbone.layer2.0.downsample.bn.running_var' in state
    if norm == 'ssn':
        # SparsestMaxRadiusHook: radius of the last iteration's ramp.
        radius = state['backbone.conv1.bn.radius']
        assert radius.item() == pytest.approx((ITERS - 1) / ITERS)
        assert state['backbone.conv1.bn.mean_fixed'].dtype == torch.long

    # Testing: tools/test.py reports mmaction's accuracy metrics.
    test_dir = str(tmp_path / 'test')
    run_tool('test.py', config, checkpoint, '--work-dir', test_dir,
             '--cfg-options', *data_options(data_root))
    # <timestamp>/<timestamp>.json; tools/test.py also writes run_info.json.
    results = [
        p for p in glob.glob(osp.join(test_dir, '*', '*.json'))
        if osp.basename(p) == osp.basename(osp.dirname(p)) + '.json'
    ]
    assert len(results) == 1
    with open(results[0]) as f:
        metrics = json.load(f)
    assert 0 <= metrics['acc/top1'] <= 1
    assert metrics['acc/top5'] == 1.0  # 4 classes: always in the top 5
    assert 0 <= metrics['acc/mean1'] <= 1
