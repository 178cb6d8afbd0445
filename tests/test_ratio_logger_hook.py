"""RatioLoggerHook in a short CPU mmengine run."""
import json

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.registry import HOOKS
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

from ssn_norm import SN, SSN
from ssn_norm.analysis import checkpoint_ratios, model_ratios
from ssn_norm.hooks import RatioLoggerHook


class _Toy(BaseModel):
    """Detector-like module names: backbone stem and stages, a neck."""

    def __init__(self, norm=SN, ssn_stage=True):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.backbone.bn1 = norm(4)
        self.backbone.layer1 = nn.Sequential(
            nn.Conv2d(4, 4, 3, padding=1), norm(4))
        self.backbone.layer2 = nn.Sequential(
            nn.Conv2d(4, 4, 3, padding=1),
            SSN(4) if ssn_stage else norm(4), nn.Conv2d(4, 4, 3, padding=1),
            SSN(4) if ssn_stage else norm(4))
        self.neck = nn.Sequential(nn.Conv2d(4, 2, 1), norm(2))

    def forward(self, inputs, labels, mode='tensor'):
        x = self.backbone.bn1(self.backbone.conv1(inputs))
        x = self.backbone.layer2(self.backbone.layer1(x))
        logits = self.neck(x).mean((2, 3))
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(logits, labels))
        return logits


class _Blobs(Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        label = index % 2
        image = torch.randn(3, 6, 6, generator=generator) + 2 * label
        return dict(inputs=image, labels=label)


def _train(tmp_path,
           model,
           custom_hooks,
           max_iters=4,
           log_interval=2,
           checkpoint=None):
    runner = Runner(
        model=model,
        work_dir=str(tmp_path),
        train_dataloader=dict(
            dataset=_Blobs(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=4,
            num_workers=0,
            collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.5)),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=log_interval),
            checkpoint=checkpoint),
        custom_hooks=custom_hooks,
        log_processor=dict(by_epoch=False),
        default_scope=None,
        randomness=dict(seed=0))
    runner.train()
    files = list(tmp_path.glob('*/vis_data/scalars.json'))
    assert len(files) == 1
    lines = [json.loads(line) for line in files[0].read_text().splitlines()]
    return runner, {line['step']: line for line in lines}


def test_ratios_land_in_scalars_json_at_every_log_line(tmp_path):
    model = _Toy()
    runner, logged = _train(
        tmp_path,
        model, [
            dict(type='RatioLoggerHook'),
            dict(type='SparsestMaxRadiusHook', end=2, interval=2),
        ],
        checkpoint=dict(type='CheckpointHook', interval=4, by_epoch=False))
    # Follows the LoggerHook's interval (2), so steps 2 and 4 only.
    assert sorted(logged) == [2, 4]
    last = logged[4]
    groups = ('all', 'backbone.stem', 'backbone.layer1', 'backbone.layer2',
              'neck')
    for group in groups:
        for statistic in ('mean', 'var'):
            shares = [
                last[f'ratio/{group}/{statistic}_{n}']
                for n in ('IN', 'LN', 'BN')
            ]
            assert sum(shares) == pytest.approx(1, abs=1e-6)
    # The values of the last line are the final model's ratios.
    layers = model_ratios(runner.model)
    stage2 = [lay for lay in layers if lay.name.startswith('backbone.layer2')]
    assert last['ratio/backbone.layer2/var_LN'] == pytest.approx(
        sum(lay.share('var', 'LN') for lay in stage2) / 2, abs=1e-7)
    assert last['ratio/all/mean_BN'] == pytest.approx(
        sum(lay.share('mean', 'BN') for lay in layers) / 5, abs=1e-7)
    # The radius reached 1 at iteration 2: both SSN layers are one-hot.
    # The radius hook logs the radius, this hook the ratios: each quantity
    # once, under one name.
    assert last['ssn_radius'] == 1.0
    assert last['ratio/ssn_layers'] == 2
    assert last['ratio/one_hot_layers'] == 2
    assert logged[2]['ssn_radius'] == pytest.approx(0.5)
    for line in logged.values():
        assert not {'ratio/radius', 'ssn_one_hot_layers', 'ssn_layers'} & (
            set(line))
    # SN ratios moved away from uniform during training.
    assert last['ratio/neck/mean_IN'] != pytest.approx(1 / 3, abs=1e-4)
    # The Runner's own checkpoint (message hub, numpy objects and all)
    # gives the same ratios.
    saved = checkpoint_ratios(str(tmp_path / 'iter_4.pth'))
    assert [(lay.name, lay.mean, lay.var, lay.frozen) for lay in saved
            ] == [(lay.name, lay.mean, lay.var, lay.frozen) for lay in layers]


def test_explicit_interval_and_all_only(tmp_path):
    _, logged = _train(
        tmp_path,
        _Toy(ssn_stage=False),
        [dict(type='RatioLoggerHook', interval=3, per_group=False)],
        max_iters=3,
        log_interval=1)
    # Every 3rd iteration, and at the end of the (2-iteration) epoch, as
    # the LoggerHook itself does.
    assert 'ratio/all/mean_IN' not in logged[1]
    assert 'ratio/all/mean_IN' in logged[2] and 'ratio/all/mean_IN' in (
        logged[3])
    assert not any(k.startswith('ratio/backbone') for k in logged[3])
    assert 'ratio/one_hot_layers' not in logged[3]  # no SSN layer


def test_model_without_switchable_norms_logs_nothing(tmp_path):
    model = _Toy(norm=lambda c: nn.BatchNorm2d(c), ssn_stage=False)
    _, logged = _train(
        tmp_path,
        model, [dict(type='RatioLoggerHook')],
        max_iters=2,
        log_interval=1)
    assert logged and not any(k.startswith('ratio/') for k in logged[2])


@pytest.mark.parametrize('kwargs, message', [
    (dict(interval=0), r'interval must be a positive int or None'),
    (dict(interval=True), r'interval must be a positive int or None'),
    (dict(stage_prefixes='backbone'), r'stage_prefixes must be a list'),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RatioLoggerHook(**kwargs)


def test_registered_by_name():
    assert HOOKS.get('RatioLoggerHook') is RatioLoggerHook
