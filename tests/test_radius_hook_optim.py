"""SparsestMaxRadiusHook and the ratio-clipping optimizer wrapper.

The wrapper is checked step by step against gradients computed by hand; the
hook and the wrapper together run in tiny mmengine Runner jobs (10
iterations on a 2-layer SSN model), including an interrupted run resumed
from its checkpoint.
"""
import copy
import json
import os.path as osp
from glob import glob
from types import SimpleNamespace

import pytest
import torch
from _helpers import loader_cfg
from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from mmengine.optim import build_optim_wrapper
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

from ssn_norm import SN, SSN
from ssn_norm.hooks import SparsestMaxRadiusHook
from ssn_norm.optim import ratio_logit_parameters

MAX_ITERS = 10


# -------------------------------------------------------------- the schedule
def test_radius_schedule_is_linear_and_clamped():
    hook = SparsestMaxRadiusHook()
    assert [hook.radius_at(i, 10)
            for i in (0, 5, 9, 10, 20)] == [0.0, 0.5, 0.9, 1.0, 1.0]
    hook = SparsestMaxRadiusHook(
        start_radius=0.2, end_radius=0.6, begin=2, end=6)
    assert hook.radius_at(0, 100) == pytest.approx(0.2)
    assert hook.radius_at(4, 100) == pytest.approx(0.4)
    assert hook.radius_at(50, 100) == pytest.approx(0.6)


@pytest.mark.parametrize('kwargs, match', [
    (dict(start_radius=-0.1),
     r'start_radius must be a finite number >= 0 .*got -0.1'),
    (dict(end_radius=-1), r'end_radius must be a finite number >= 0 .*got -1'),
    (dict(begin=5, end=5), r'end \(5\) must be greater than begin \(5\)'),
    (dict(interval=0), r'interval must be >= 1, got 0'),
])
def test_hook_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparsestMaxRadiusHook(**kwargs)


def test_hook_warns_without_ssn_layers():
    warnings = []
    runner = SimpleNamespace(
        model=nn.Sequential(nn.Conv2d(3, 4, 1), SN(4)),
        logger=SimpleNamespace(warning=warnings.append))
    SparsestMaxRadiusHook().before_train(runner)
    assert len(warnings) == 1 and 'no SSN layer' in warnings[0]


# ------------------------------------------------------ ratio-logit clipping
def _sn_model():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), SN(4), nn.Conv2d(4, 2, 1), SSN(2)).double()


def _loss(model):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    target = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    return 1e3 * (model(x) * target).sum()


def test_ratio_clip_wrapper_clips_only_the_logits():
    model = _sn_model()
    reference = copy.deepcopy(model)
    _loss(reference).backward()
    raw = {name: p.grad for name, p in reference.named_parameters()}
    logit_names = [n for n in raw if n.endswith(('mean_weight', 'var_weight'))]
    assert len(logit_names) == 4
    raw_norm = torch.cat([raw[n] for n in logit_names]).norm()
    assert raw_norm > 1  # large enough to be clipped

    optim_wrapper = build_optim_wrapper(
        model,
        dict(
            type='RatioClipOptimWrapper',
            constructor='SwitchableOptimWrapperConstructor',
            ratio_clip_grad=dict(max_norm=0.5),
            optimizer=dict(type='SGD', lr=1.0)))
    assert len(optim_wrapper.ratio_params) == 4
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optim_wrapper.update_params(_loss(model))
    factor = 0.5 / (raw_norm + 1e-6)  # clip_grad_norm_'s scaling
    for name, param in model.named_parameters():
        step = before[name] - param.detach()
        expected = raw[name] * factor if name in logit_names else raw[name]
        torch.testing.assert_close(
            step, expected, atol=1e-9, rtol=1e-9, msg=lambda m: f'{name}: {m}')
    logged = MessageHub.get_current_instance().get_scalar(
        'train/ratio_grad_norm').current()
    assert logged == pytest.approx(float(raw_norm))


def test_ratio_clip_wrapper_needs_the_constructor():
    model = _sn_model()
    optim_wrapper = build_optim_wrapper(
        model,
        dict(type='RatioClipOptimWrapper', optimizer=dict(type='SGD', lr=0.1)))
    with pytest.raises(
            RuntimeError,
            match="constructor='SwitchableOptimWrapperConstructor'"):
        optim_wrapper.update_params(_loss(model))


def test_ratio_clip_wrapper_needs_max_norm():
    with pytest.raises(ValueError, match=r'ratio_clip_grad needs max_norm'):
        build_optim_wrapper(
            _sn_model(),
            dict(
                type='RatioClipOptimWrapper',
                constructor='SwitchableOptimWrapperConstructor',
                ratio_clip_grad=dict(norm_type=2),
                optimizer=dict(type='SGD', lr=0.1)))


def test_frozen_logits_are_still_ratio_params():
    model = _sn_model()
    model[1].mean_weight.requires_grad_(False)
    params = ratio_logit_parameters(model)
    assert len(params) == 3
    assert all(p.requires_grad for p in params)


# ----------------------------------------------------------- Runner jobs
class TinyDataset(Dataset):

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(6, 3, 6, 6, generator=generator)
        self.targets = torch.randn(6, 4, 6, 6, generator=generator)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index):
        return dict(inputs=self.inputs[index], targets=self.targets[index])


class TinySSNModel(BaseModel):

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.norm1 = SSN(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.norm2 = SSN(4)

    def forward(self, inputs, targets=None, mode='tensor'):
        out = self.norm2(self.conv2(self.norm1(self.conv1(inputs)).relu()))
        if mode == 'loss':
            return dict(loss=(out - targets).square().mean())
        return out


class RadiusRecorder(Hook):
    """Records every SSN radius right after the radius hook has set it."""

    priority = 'LOW'

    def __init__(self) -> None:
        self.radii = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.radii.append([
            float(m.radius) for m in runner.model.modules()
            if isinstance(m, SSN)
        ])


def make_runner(work_dir, name, recorder, resume_from=None):
    torch.manual_seed(0)
    return Runner(
        model=TinySSNModel(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=loader_cfg(
            TinyDataset(), sampler='InfiniteSampler', shuffle=True),
        train_cfg=dict(by_epoch=False, max_iters=MAX_ITERS),
        optim_wrapper=dict(
            type='RatioClipOptimWrapper',
            constructor='SwitchableOptimWrapperConstructor',
            ratio_clip_grad=dict(max_norm=1.0),
            optimizer=dict(
                type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-4),
            paramwise_cfg=dict(
                custom_keys={
                    'mean_weight': dict(lr_mult=0.1, decay_mult=0.),
                    'var_weight': dict(lr_mult=0.1, decay_mult=0.),
                })),
        custom_hooks=[
            dict(type='SparsestMaxRadiusHook', interval=1),
            dict(type='RatioLoggerHook', per_group=False), recorder
        ],
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='CheckpointHook', by_epoch=False,
                            interval=5)),
        load_from=resume_from,
        resume=resume_from is not None,
        randomness=dict(seed=0),
        log_level='WARNING')


def read_scalars(work_dir):
    path, = glob(osp.join(str(work_dir), '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('full')
    recorder = RadiusRecorder()
    runner = make_runner(work_dir, 'ssn_full', recorder)
    runner.train()
    return runner, recorder, work_dir


def test_runner_sets_the_radius_linearly_and_logs_it_once(full_run):
    runner, recorder, work_dir = full_run
    assert recorder.radii == [
        pytest.approx([i / MAX_ITERS] * 2) for i in range(MAX_ITERS)
    ]
    model = runner.model
    assert float(model.norm1.radius) == pytest.approx(0.9)
    # r = 0.9 > 0.8165 in the last iteration: every ratio is one-hot.
    assert model.norm1.frozen.all() and model.norm2.frozen.all()
    logs = read_scalars(work_dir)
    assert [log['iter'] for log in logs] == list(range(1, MAX_ITERS + 1))
    assert [log['ssn_radius'] for log in logs
            ] == pytest.approx([i / MAX_ITERS for i in range(MAX_ITERS)])
    # The one-hot count is the ratio logger's; the radius hook logs the
    # radius alone, so no quantity appears under two names.
    one_hot = [log['ratio/one_hot_layers'] for log in logs]
    assert one_hot[0] == 0 and one_hot[-1] == 2
    assert one_hot == sorted(one_hot)  # frozen stays frozen
    assert all(log['ratio/ssn_layers'] == 2 for log in logs)
    assert not any({'ratio/radius', 'ssn_one_hot_layers', 'ssn_layers'}
                   & set(log) for log in logs)
    assert all(0 < log['ratio_grad_norm'] for log in logs[:5])


def test_runner_resume_continues_identically(full_run, tmp_path):
    full_runner, _, full_dir = full_run
    checkpoint = osp.join(str(full_dir), 'iter_5.pth')
    assert osp.isfile(checkpoint)
    recorder = RadiusRecorder()
    runner = make_runner(tmp_path, 'ssn_resumed', recorder, checkpoint)
    runner.train()
    assert runner.iter == MAX_ITERS
    assert recorder.radii == [
        pytest.approx([i / MAX_ITERS] * 2) for i in range(5, MAX_ITERS)
    ]
    resumed = runner.model.state_dict()
    full = full_runner.model.state_dict()
    assert resumed.keys() == full.keys()
    for key in ('norm1.radius', 'norm1.mean_fixed', 'norm1.var_fixed',
                'norm2.radius', 'norm2.mean_fixed', 'norm2.var_fixed',
                'norm2.mean_weight', 'norm2.var_weight'):
        assert torch.equal(resumed[key], full[key]), key
    for key, value in full.items():
        torch.testing.assert_close(
            resumed[key],
            value,
            atol=1e-6,
            rtol=1e-6,
            msg=lambda m: f'{key}: {m}')
    x = torch.randn(2, 3, 6, 6)
    runner.model.eval()
    full_runner.model.eval()
    torch.testing.assert_close(
        runner.model(x), full_runner.model(x), atol=1e-5, rtol=1e-5)
