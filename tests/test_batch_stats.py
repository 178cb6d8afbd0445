"""Batch-average statistics: library, hook, tool, and two processes.

References are computed here from the inputs with the released formulas
(unbiased IN variance, BN second moment = E[var_in + mean_in²]), in float64.
"""
import copy
import glob
import json
import os.path as osp

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _helpers import free_port, gloo_group, run_tool
from mmengine.config import Config
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, HOOKS, METRICS, MODELS
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

from ssn_norm import SN, SSN, SyncSN, SyncSSN
from ssn_norm.batch_stats import compute_batch_stats
from ssn_norm.hooks import BatchStatsHook

C = 4
TOL = dict(rtol=1e-10, atol=1e-12)


def moments(x):
    """(mean, second moment) per channel over samples, released numerics."""
    x = x.flatten(2).double()
    mean_in = x.mean(-1)
    var_in = x.var(-1, correction=1)
    return mean_in.mean(0), (var_in + mean_in.square()).mean(0)


def as_stats(mean, sqmean):
    return mean, sqmean - mean.square()


def parallel_model():
    """Norms that all see the raw input, plus a BN that must not change."""
    model = nn.ModuleDict(
        dict(
            sn=SN(C),
            ssn=SSN(C),
            sync_sn=SyncSN(C),
            sync_ssn=SyncSSN(C),
            cumulative=SN(C, using_moving_average=False),
            bn=nn.BatchNorm2d(C))).double()
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.uniform_(0.5, 1.5)
        model['ssn'].radius.fill_(1.0)  # would freeze if gradients were on
    return model


def run_all(model, batch):
    return [layer(batch) for layer in model.values()]


def test_equals_the_exact_average_and_ignores_the_batch_split(device):
    data = torch.randn(10, C, 3, 5, dtype=torch.float64) * 2 + 1
    expected = [stat.to(device) for stat in as_stats(*moments(data))]
    data = data.to(device)
    results = []
    for sizes in ((4, 4, 2), (1, 3, 6), (10, )):
        model = parallel_model().to(device)
        before = copy.deepcopy(model.state_dict())
        counts = compute_batch_stats(
            model, data.split(list(sizes)), len(sizes), forward=run_all)
        assert counts == {n: 10 for n in model if n != 'bn'}
        for name in ('sn', 'ssn', 'sync_sn', 'sync_ssn', 'cumulative'):
            layer = model[name]
            torch.testing.assert_close(layer.running_mean, expected[0], **TOL)
            torch.testing.assert_close(layer.running_var, expected[1], **TOL)
        after = model.state_dict()
        stats = ('running_mean', 'running_var')
        for key, value in before.items():
            if key.startswith('bn.') or not key.endswith(stats):
                torch.testing.assert_close(after[key], value, msg=key)
        assert int(model['ssn'].mean_fixed) == 0  # no ratio froze
        results.append(model['sn'].running_var.clone())
    torch.testing.assert_close(results[0], results[1], **TOL)


def test_deep_model_uses_the_moments_seen_in_training_mode(device):
    model = nn.Sequential(
        nn.Conv2d(3, C, 3), SN(C), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(C, C, 3), SSN(C), nn.ReLU(), nn.Conv2d(C, C, 1),
        SyncSN(C)).to(device, torch.float64)
    batches = [
        torch.randn(n, 3, 9, 9, dtype=torch.float64, device=device)
        for n in (2, 5)
    ]
    # Reference: the inputs each norm sees when norms use batch statistics
    # (train mode) and everything else is frozen (dropout off).
    reference = copy.deepcopy(model).eval()
    seen = {i: [] for i in (1, 5, 8)}
    for index in seen:
        reference[index].train()
        reference[index].register_forward_pre_hook(
            lambda m, args, i=index: seen[i].append(args[0]))
    with torch.no_grad():
        for batch in batches:
            reference(batch)
    model.train()
    compute_batch_stats(model, batches, 2)
    assert all(m.training for m in model.modules())  # modes restored
    for index, inputs in seen.items():
        sums = [moments(x) for x in inputs]
        sizes = [x.shape[0] for x in inputs]
        mean = sum(n * m for n, (m, _) in zip(sizes, sums)) / sum(sizes)
        sqmean = sum(n * s for n, (_, s) in zip(sizes, sums)) / sum(sizes)
        expected = as_stats(mean, sqmean)
        torch.testing.assert_close(model[index].running_mean, expected[0],
                                   **TOL)
        torch.testing.assert_close(model[index].running_var, expected[1],
                                   **TOL)


def test_errors_leave_the_model_untouched():
    model = parallel_model()
    model.eval()
    before = copy.deepcopy(model.state_dict())
    data = [torch.randn(2, C, 3, 3, dtype=torch.float64)] * 2
    with pytest.raises(
            RuntimeError,
            match='data has 2 batches per process, '
            'fewer than num_batches=3'):
        compute_batch_stats(model, data, 3, forward=run_all)
    with pytest.raises(RuntimeError, match='the data ran out after 2 batches'):
        compute_batch_stats(model, iter(data), 3, forward=run_all)

    def forward_sn_only(m, batch):
        m['sn'](batch)

    with pytest.raises(
            RuntimeError,
            match=r'4 SN layers saw no batch \(ssn, '
            r'sync_sn, sync_ssn, cumulative\)'):
        compute_batch_stats(model, data, 2, forward=forward_sn_only)

    def failing(m, batch):
        run_all(m, batch)
        raise KeyError('boom')

    with pytest.raises(KeyError, match='boom'):
        compute_batch_stats(model, data, 2, forward=failing)
    assert not any(m.training for m in model.modules())
    assert all(m.moment_recorder is None for m in model.values()
               if hasattr(m, 'moment_recorder'))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    with pytest.raises(
            ValueError, match='num_batches must be a positive '
            'int, got 0'):
        compute_batch_stats(model, data, 0, forward=run_all)
    with pytest.raises(ValueError, match='Sequential has no SN/SSN layer'):
        compute_batch_stats(nn.Sequential(nn.BatchNorm2d(C)), data, 1)
    with pytest.raises(TypeError, match="batch of type dict"):
        compute_batch_stats(SN(C), [{'x': 1}], 1)


# ------------------------------------------------------ two processes
WORLD = 2
RANK_BATCHES = {0: (3, 1), 1: (2, 4)}  # uneven, per rank


def rank_data(rank):
    generator = torch.Generator().manual_seed(rank)
    return [
        torch.randn(n, C, 3, 4, generator=generator, dtype=torch.float64) +
        3 * rank for n in RANK_BATCHES[rank]
    ]


def _worker(rank, port, out_dir):
    with gloo_group(rank, WORLD, port, timeout_s=60):
        model = nn.ModuleDict(
            dict(sn=SN(C), sync_sn=SyncSN(C), sync_ssn=SyncSSN(C))).double()
        counts = compute_batch_stats(model, rank_data(rank), 2, run_all)
        torch.save({
            'state': model.state_dict(),
            'counts': counts
        }, osp.join(out_dir, f'rank{rank}.pth'))


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason='torch.distributed with the gloo backend is not available')
def test_two_processes_average_over_all_samples(tmp_path):
    mp.spawn(
        _worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    everything = torch.cat([x for r in range(WORLD) for x in rank_data(r)])
    expected = as_stats(*moments(everything))
    for rank in range(WORLD):
        saved = torch.load(tmp_path / f'rank{rank}.pth', weights_only=True)
        assert saved['counts'] == {'sn': 10, 'sync_sn': 10, 'sync_ssn': 10}
        for name in ('sn', 'sync_sn', 'sync_ssn'):
            torch.testing.assert_close(saved['state'][f'{name}.running_mean'],
                                       expected[0], **TOL)
            torch.testing.assert_close(saved['state'][f'{name}.running_var'],
                                       expected[1], **TOL)


# ------------------------------------------------------- hook and tool
@DATASETS.register_module(force=True)
class BatchStatsToyDataset(Dataset):

    def __init__(self, length=8):
        self.images = torch.randn(
            length, 3, 6, 6, generator=torch.Generator().manual_seed(3))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return dict(inputs=self.images[index], data_samples=index)


@MODELS.register_module(force=True)
class BatchStatsToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3)
        self.norm = SN(C)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.norm(self.conv(torch.stack(inputs)))
        if mode == 'loss':
            return {'loss': out.square().mean()}
        if mode == 'predict':
            return [out.mean()]
        return out


@METRICS.register_module(force=True)
class BatchStatsToyMetric(BaseMetric):

    def process(self, data_batch, data_samples):
        self.results.append(0)

    def compute_metrics(self, results):
        return dict(toy=1.0)


def loader_cfg(batch_size=3):
    return dict(
        batch_size=batch_size,
        num_workers=0,
        dataset=dict(type='BatchStatsToyDataset'),
        sampler=dict(type='DefaultSampler', shuffle=False))


def expected_for(model, num_samples):
    images = BatchStatsToyDataset().images[:num_samples]
    with torch.no_grad():
        features = model.conv(images)
    mean, sqmean = moments(features)
    return as_stats(mean, sqmean)


def toy_runner(tmp_path, hook, **cfg):
    """A runner of the toy model from a config, as tools/train.py and
    tools/test.py build it, with the hook where the configs put it."""
    cfg.setdefault('default_hooks', {})['batch_stats'] = dict(
        type='BatchStatsHook', progress=False, **hook)
    return Runner.from_cfg(
        Config(
            dict(
                model=dict(type='BatchStatsToyModel'),
                work_dir=str(tmp_path),
                # mmengine keeps one logger and visualizer per name.
                experiment_name=str(tmp_path).replace('/', '_'),
                default_scope='mmengine',
                **cfg)))


def hook_runner(tmp_path, by_epoch=False, train_sampler=None, **hook):
    """Training: 4 iterations (2 epochs of 2 batches of 3), a checkpoint and
    a validation every 2."""
    train_loader = dict(loader_cfg(), drop_last=True)
    if train_sampler is not None:
        train_loader['sampler'] = train_sampler
    if by_epoch:
        train_cfg = dict(by_epoch=True, max_epochs=2, val_interval=1)
    else:
        train_cfg = dict(by_epoch=False, max_iters=4, val_interval=2)
    return toy_runner(
        tmp_path,
        hook,
        train_dataloader=train_loader,
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        val_dataloader=loader_cfg(4),
        val_cfg=dict(),
        val_evaluator=dict(type='BatchStatsToyMetric'),
        default_hooks=dict(
            checkpoint=dict(
                type='CheckpointHook',
                by_epoch=by_epoch,
                interval=1 if by_epoch else 2)),
        custom_hooks=[dict(type='MovingAverageSpy')],
        visualizer=dict(
            type='Visualizer', vis_backends=[dict(type='LocalVisBackend')]))


@HOOKS.register_module(force=True)
class MovingAverageSpy(Hook):
    """Copies the SN running statistics at every iteration's end, before
    BatchStatsHook (priority LOW) can replace them."""
    priority = 'BELOW_NORMAL'

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        norm = runner.model.norm
        if not norm.using_bn:
            return
        self.moving = {
            'norm.running_mean': norm.running_mean.clone(),
            'norm.running_var': norm.running_var.clone()
        }


def logged_statistics(work_dir):
    """``batch_stats_samples`` of every validation entry in scalars.json."""
    (path, ) = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        entries = [json.loads(line) for line in f]
    return [e['batch_stats_samples'] for e in entries if 'toy' in e]


@pytest.mark.parametrize('by_epoch', [False, True], ids=['iters', 'epochs'])
def test_hook_at_train_end_fills_the_last_checkpoint(tmp_path, by_epoch):
    runner = hook_runner(tmp_path, by_epoch, num_batches=2)
    runner.train()
    model = runner.model
    mean, var = expected_for(model, 6)  # two batches of 3, in order
    for state in (model.state_dict(),
                  torch.load(
                      tmp_path / ('epoch_2.pth' if by_epoch else 'iter_4.pth'),
                      weights_only=False)['state_dict']):
        torch.testing.assert_close(
            state['norm.running_mean'].double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            state['norm.running_var'].double(), var, rtol=1e-5, atol=1e-6)
    last = torch.load(
        tmp_path / ('epoch_2.pth' if by_epoch else 'iter_4.pth'),
        weights_only=False)
    info = last['meta']['batch_stats']
    assert (info['num_batches'], info['mode'], info['samples']) == (2, 'loss',
                                                                    6)
    spy = next(h for h in runner.hooks if isinstance(h, MovingAverageSpy))
    assert info['moving_average'].keys() == spy.moving.keys()
    for key, value in spy.moving.items():
        torch.testing.assert_close(info['moving_average'][key], value)
        assert not torch.allclose(value, last['state_dict'][key])
    # The checkpoint before the end holds moving averages and says nothing.
    first = torch.load(
        tmp_path / ('epoch_1.pth' if by_epoch else 'iter_2.pth'),
        weights_only=False)
    assert 'batch_stats' not in first['meta']
    # The validation during training used moving averages, the final one
    # the batch averages of 6 samples.
    assert logged_statistics(tmp_path) == [0, 6]


def test_hook_before_validation(tmp_path):
    runner = hook_runner(tmp_path, num_batches=2, stages=('val', ))
    runner.train()
    model = runner.model
    mean, var = expected_for(model, 6)
    torch.testing.assert_close(
        model.norm.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        model.norm.running_var.double(), var, rtol=1e-5, atol=1e-6)
    assert logged_statistics(tmp_path) == [6, 6]


def test_hook_before_every_validation_of_an_infinite_loader(tmp_path):
    # Iteration-based configs draw training batches from an
    # InfiniteSampler; each validation needs its own pass over the data.
    runner = hook_runner(
        tmp_path,
        num_batches=2,
        stages=('val', ),
        train_sampler=dict(type='InfiniteSampler', shuffle=False))
    runner.train()
    mean, var = expected_for(runner.model, 6)
    torch.testing.assert_close(
        runner.model.norm.running_var.double(), var, rtol=1e-5, atol=1e-6)
    assert logged_statistics(tmp_path) == [6, 6]


def test_num_batches_stops_at_one_pass_over_the_data(tmp_path):
    runner = hook_runner(tmp_path, num_batches=50)
    runner.train()
    # The loader has 2 batches of 3 (drop_last): all 6 samples once.
    assert logged_statistics(tmp_path) == [0, 6]
    mean, var = expected_for(runner.model, 6)
    torch.testing.assert_close(
        runner.model.norm.running_mean.double(), mean, rtol=1e-5, atol=1e-6)


def make_tester(tmp_path, checkpoint, **hook):
    return toy_runner(
        tmp_path,
        hook,
        test_dataloader=loader_cfg(4),
        test_cfg=dict(),
        test_evaluator=dict(type='BatchStatsToyMetric'),
        load_from=str(checkpoint))


def metrics_of(runner):
    runner.test()
    (path, ) = glob.glob(osp.join(runner.log_dir, '*.json'))
    with open(path) as f:
        return json.load(f)


def test_test_uses_the_batch_averages_or_the_saved_moving_averages(tmp_path):
    hook_runner(tmp_path / 'train', num_batches=2).train()
    checkpoint = torch.load(
        tmp_path / 'train' / 'iter_4.pth', weights_only=False)
    saved = checkpoint['meta']['batch_stats']['moving_average']
    runner = make_tester(tmp_path / 'batch', tmp_path / 'train' / 'iter_4.pth')
    assert metrics_of(runner)['batch_stats_samples'] == 6
    for key in saved:
        torch.testing.assert_close(runner.model.state_dict()[key],
                                   checkpoint['state_dict'][key])
    runner = make_tester(
        tmp_path / 'moving',
        tmp_path / 'train' / 'iter_4.pth',
        statistics='moving_average')
    assert metrics_of(runner)['batch_stats_samples'] == 0
    for key, value in saved.items():
        torch.testing.assert_close(runner.model.state_dict()[key], value)
    # A checkpoint saved before the end: moving averages, and a warning.
    runner = make_tester(tmp_path / 'early', tmp_path / 'train' / 'iter_2.pth')
    assert metrics_of(runner)['batch_stats_samples'] == 0


def test_moving_average_training_computes_nothing(tmp_path):
    runner = hook_runner(tmp_path, num_batches=2, statistics='moving_average')
    runner.train()
    assert 'batch_stats' not in torch.load(
        tmp_path / 'iter_4.pth', weights_only=False)['meta']
    assert logged_statistics(tmp_path) == [0, 0]


def test_batch_averages_without_saved_moving_averages_are_named(tmp_path):
    from ssn_norm.batch_stats import restore_moving_averages
    checkpoint = dict(
        state_dict={}, meta=dict(batch_stats=dict(num_batches=2, samples=6)))
    with pytest.raises(
            ValueError,
            match=r"old.pth holds batch-average statistics without the "
            r'moving averages they replaced .* cannot be evaluated with '
            r"statistics='moving_average'"):
        restore_moving_averages(checkpoint, 'old.pth')


def test_model_without_bn_statistics_is_left_alone(tmp_path):
    runner = hook_runner(tmp_path, num_batches=2)
    runner.model.norm = SN(C, normalizers=('IN', 'LN'))
    runner.train()
    assert 'batch_stats' not in torch.load(
        tmp_path / 'iter_4.pth', weights_only=False)['meta']
    with open(glob.glob(osp.join(tmp_path, '*', '*.log'))[0]) as f:
        assert 'the model has no SN layer with BN statistics' in f.read()


def test_hook_arguments_are_validated():
    with pytest.raises(
            ValueError, match='num_batches must be a positive '
            'int, got -1'):
        BatchStatsHook(num_batches=-1)
    with pytest.raises(ValueError, match="mode must be .* got 'train'"):
        BatchStatsHook(mode='train')
    with pytest.raises(
            ValueError,
            match=r"subset of \('train_end', 'val', 'test'\), "
            r"got \('train',\)"):
        BatchStatsHook(stages='train')
    with pytest.raises(
            ValueError,
            match=r"statistics must be one of \('batch_average', "
            r"'moving_average'\), got 'moving'"):
        BatchStatsHook(statistics='moving')


def test_tool_writes_a_checkpoint_with_batch_averages(tmp_path):
    config = tmp_path / 'toy.py'
    config.write_text(
        "model = dict(type='BatchStatsToyModel')\n"
        f'train_dataloader = {loader_cfg(2)!r}\n'
        "train_cfg = dict(by_epoch=False, max_iters=1)\n"
        "optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1))\n")
    model = BatchStatsToyModel()
    checkpoint, out = tmp_path / 'trained.pth', tmp_path / 'averaged.pth'
    torch.save({
        'state_dict': model.state_dict(),
        'meta': {
            'epoch': 3
        }
    }, checkpoint)
    assert run_tool('compute_batch_stats', config, checkpoint, out,
                    '--num-batches', '3', '--work-dir', tmp_path / 'work') == 0
    saved = torch.load(out, weights_only=True)
    assert saved['meta']['epoch'] == 3
    info = saved['meta']['batch_stats']
    moving = info.pop('moving_average')
    assert info == dict(
        num_batches=3, mode='loss', samples=6, source='trained.pth')
    # The moving averages the input held are kept beside the averages.
    assert moving.keys() == {'norm.running_mean', 'norm.running_var'}
    for key, value in moving.items():
        torch.testing.assert_close(value, model.state_dict()[key])
    mean, var = expected_for(model, 6)
    torch.testing.assert_close(
        saved['state_dict']['norm.running_mean'].double(),
        mean,
        rtol=1e-5,
        atol=1e-6)
    torch.testing.assert_close(
        saved['state_dict']['norm.running_var'].double(),
        var,
        rtol=1e-5,
        atol=1e-6)
    torch.testing.assert_close(saved['state_dict']['conv.weight'],
                               model.conv.weight)
