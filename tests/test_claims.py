"""The claims preset: its decision rule, its run matrix, and the whole
pipeline end to end on the smoke plan."""
import math
import os.path as osp

import pytest
from _helpers import run_tool

from ssn_norm import claims
from ssn_norm.analysis import claims as rules
from ssn_norm.analysis.ratios import LayerRatios
from ssn_norm.apis.launch import load_config
from ssn_norm.suite import MINI, REPO_ROOT

S = rules.Summary.of

# The decision rule ---------------------------------------------------------


def test_summary_statistics_and_format():
    summary = S([1.0, 2.0, 3.0])
    assert summary.mean == 2.0 and summary.sd == 1.0
    assert summary.se == pytest.approx(1 / math.sqrt(3))
    assert summary.format() == '2.0 ± 1.0 (3)'
    assert S([4.0]).format() == '4.0 (1)' and math.isnan(S([4.0]).sd)
    assert S([]).format() == '–'


@pytest.mark.parametrize(
    'estimate,se,expected,verdict',
    [
        (5.0, 2.0, 1, rules.HOLDS),  # 2.5 SE in the claimed direction
        (3.9, 2.0, 1, rules.NOT_SHOWN),  # 1.95 SE
        (-5.0, 2.0, 1, rules.CONTRADICTED),
        (-5.0, 2.0, -1, rules.HOLDS),  # a claimed decrease
        (5.0, 2.0, -1, rules.CONTRADICTED),
        (0.0, 0.0, 1, rules.NOT_SHOWN),
        (math.nan, 1.0, 1, rules.NOT_SHOWN),
    ])
def test_directional_verdicts(estimate, se, expected, verdict):
    test = rules.directional('x', estimate, se, (3, 3), expected)
    assert test.verdict == verdict, test.reason


def test_too_few_seeds_are_not_shown():
    # A huge effect, but one mean rests on two seeds.
    test = rules.directional('x', 50.0, 0.1, (3, 2))
    assert test.verdict == rules.NOT_SHOWN
    assert test.reason.startswith('fewer than 3 seeds')
    two = rules.compare('x', S([90, 91]), S([10, 11]))
    assert two.verdict == rules.NOT_SHOWN


def test_combine():
    holds = rules.directional('a', 5, 1, (3, ))
    not_shown = rules.directional('b', 1, 1, (3, ))
    contradicted = rules.directional('c', -5, 1, (3, ))
    assert rules.combine([holds, holds]) == rules.HOLDS
    assert rules.combine([holds, not_shown]) == rules.NOT_SHOWN
    assert rules.combine([holds, not_shown, contradicted]) == \
        rules.CONTRADICTED
    assert rules.combine([]) == rules.NOT_SHOWN


def _metric(bn, gn, sn):
    """``{(norm, setting): Summary}`` from (large, small) value lists."""
    return {
        (norm, setting): S(values)
        for norm, pair in (('BN', bn), ('GN', gn), ('SN', sn))
        for setting, values in zip(('1x16', '8x2'), pair)
    }


@pytest.mark.parametrize(
    'metric,verdict',
    [
        # BN loses 20 points at (8,2); GN and SN about nothing.
        (_metric(([80, 81, 79], [60, 61, 59]), ([78, 79, 77], [78, 77, 79]),
                 ([80, 79, 81], [79, 80, 78])), rules.HOLDS),
        # BN degrades, but SN just as much.
        (_metric(([80, 81, 79], [60, 61, 59]), ([78, 79, 77], [78, 77, 79]),
                 ([80, 79, 81], [60, 59, 61])), rules.NOT_SHOWN),
        # BN is better at (8,2).
        (_metric(([60, 61, 59], [80, 81, 79]), ([78, 79, 77], [78, 77, 79]),
                 ([80, 79, 81], [79, 80, 78])), rules.CONTRADICTED),
        # GN degrades much more than BN.
        (_metric(([80, 81, 79], [75, 76, 74]), ([78, 79, 77], [40, 41, 39]),
                 ([80, 79, 81], [79, 80, 78])), rules.CONTRADICTED),
        # Noise: differences within 2 SE.
        (_metric(([80, 70, 90], [75, 85, 65]), ([78, 79, 77], [78, 77, 79]),
                 ([80, 79, 81], [79, 80, 78])), rules.NOT_SHOWN),
        # The effect of the first case, two seeds a cell.
        (_metric(([80, 81], [60, 61]), ([78, 79], [78, 77]),
                 ([80, 79], [79, 80])), rules.NOT_SHOWN),
    ])
def test_claim1_rule(metric, verdict):
    result = rules.claim1(metric, '8x2', '1x16')
    assert [t.name for t in result.tests] == [
        'BN degrades', 'BN degrades more than GN', 'BN degrades more than SN'
    ]
    assert result.verdict == verdict


def test_claim1_needs_bn():
    metric = {
        k: v
        for k, v in _metric(([1] * 3, [1] * 3), ([1] * 3,
                                                 [1] * 3), ([1] * 3,
                                                            [1] * 3)).items()
        if k[0] != 'BN'
    }
    with pytest.raises(ValueError, match='claim 1 needs BN runs'):
        rules.claim1(metric, '8x2', '1x16')


def _shares(small, large):
    return {
        setting: {
            norm: S(v)
            for norm, v in zip(('IN', 'LN', 'BN'), values)
        }
        for setting, values in (('8x2', small), ('1x16', large))
    }


@pytest.mark.parametrize('small,large,verdict', [
    (([.3, .31, .29], [.45, .46, .44], [.25, .24, .26]),
     ([.33, .32, .34], [.30, .31, .29], [.37, .36, .38]), rules.HOLDS),
    (([.3, .31, .29], [.30, .31, .29], [.40, .41, .39]),
     ([.33, .32, .34], [.30, .31, .29], [.37, .36, .38]), rules.CONTRADICTED),
    (([.3, .31, .29], [.45, .46, .44], [.36, .37, .38]),
     ([.33, .32, .34], [.30, .31, .29], [.37, .36, .38]), rules.NOT_SHOWN),
    (([.3], [.45], [.25]), ([.33], [.30], [.37]), rules.NOT_SHOWN),
])
def test_claim2_rule(small, large, verdict):
    assert rules.claim2(_shares(small, large), '8x2',
                        '1x16').verdict == verdict


def test_claim3_rule():
    same = {n: S([1 / 3] * 3) for n in rules.SHARES}
    other = dict(same, BN=S([.2, .21, .19]))
    positive, negative = S([.1, .12, .11]), S([-.1, -.12, -.11])
    holds = rules.claim3(positive, positive, positive, {'a': same, 'b': other})
    assert holds.verdict == rules.HOLDS
    assert holds.tests[-1].reason.startswith('a vs b: BN share differs')
    # Equal profiles cannot show that tasks differ; nothing contradicts it.
    undecided = rules.claim3(positive, positive, positive, {
        'a': same,
        'b': same
    })
    assert undecided.tests[-1].verdict == rules.NOT_SHOWN
    assert undecided.verdict == rules.NOT_SHOWN
    assert rules.claim3(negative, positive, positive, {
        'a': same,
        'b': other
    }).verdict == rules.CONTRADICTED


def test_layer_share_averages_mean_and_variance_ratios():
    layers = [
        LayerRatios('backbone.bn1', 'SN', (.2, .3, .5), (.4, .3, .3)),
        LayerRatios('neck.bn', 'SN', (.1, .1, .8), (.1, .1, .8)),
    ]
    assert rules.layer_share(layers, 'BN') == pytest.approx((.4 + .8) / 2)
    assert math.isnan(rules.layer_share([], 'BN'))
    assert claims.part_of('roi_head.mask_head.convs.0.bn') == 'mask head'
    assert claims.part_of('neck.fpn_convs.0.bn') == 'FPN'
    assert claims.part_of('backbone.layer1.0.bn1') == 'backbone'


# The run matrix ------------------------------------------------------------


def test_claims_run_matrix(tmp_path):
    plan = claims.PLANS['claims']
    runs = claims.claims_runs(plan, str(tmp_path))
    assert len({r.work_name for r in runs}) == len(runs)
    claim1 = [r for r in runs if r.setting != 'claim3']
    cells = {(r.norm, r.setting) for r in claim1}
    assert cells == {(n, s)
                     for n in ('BN', 'GN', 'SN', 'SSN')
                     for s in ('8x2', '1x16')}
    for cell in cells:
        seeds = sorted(r.seed for r in claim1 if (r.norm, r.setting) == cell)
        assert seeds == [0, 1, 2]
    # Claim 1's configs are the seg minis (children of the paper rows).
    minis = MINI['seg'].configs
    for norm, key in claims.CLAIM1_NORMS.items():
        assert {r.config
                for r in claim1
                if r.norm == norm} == {osp.join(REPO_ROOT, minis[key])}
    claim3 = [(r.task, r.seed) for r in runs if r.setting == 'claim3']
    assert sorted(claim3) == [(t, s) for t in ('det', 'video')
                              for s in range(3)]
    assert runs[0].task == 'det'  # the longest runs start first
    # Both settings: 16 images per step, 120 steps; (8,2) accumulates.
    assert claims.SMALL.gpus * claims.SMALL.images == 16
    assert claims.LARGE.gpus * claims.LARGE.images == 16
    assert (claims.SMALL.images, claims.LARGE.images) == (2, 16)


@pytest.mark.parametrize('norm', ['BN', 'SN', 'SSN'])
def test_claim1_edit(tmp_path, norm):
    """The two settings of one run differ only in the statistics batch:
    same images per step, steps, schedule and seed."""
    plan = claims.PLANS['claims']
    runs = [
        r for r in claims.claim1_runs(plan, str(tmp_path))
        if r.norm == norm and r.seed == 1
    ]
    edited = {}
    for run in runs:
        cfg = load_config(run.config, run.overrides)
        run.edit(cfg)
        edited[run.setting] = cfg
    small, large = edited['8x2'], edited['1x16']
    for cfg, images, gpus in ((small, 2, 8), (large, 16, 1)):
        assert cfg.train_dataloader.batch_size == images
        assert cfg.optim_wrapper.get('accumulative_counts', 1) == gpus
        assert cfg.train_cfg.max_iters == plan.steps * gpus
        assert cfg.param_scheduler[0].end == plan.steps * gpus
        assert cfg.randomness.seed == 1
        for loader in ('train_dataloader', 'test_dataloader'):
            assert cfg[loader].dataset.data_root == str(
                tmp_path / plan.data_dir) + '/'
        hooks = {h['type']: h for h in cfg.get('custom_hooks', [])}
        keys = cfg.optim_wrapper.get('paramwise_cfg',
                                     {}).get('custom_keys', {})
        stats = cfg.default_hooks.get('batch_stats')
        if norm in ('SN', 'SSN'):
            # The paper's test statistics: the SN configs' default, one
            # pass over the training images in training-size batches.
            assert stats['stages'] == ('train_end', )
            assert stats['num_batches'] * images >= plan.num_train
            assert stats.get('statistics', 'batch_average') == \
                'batch_average'
            # The config's ratio learning rate (SSN's x0.1), times the
            # plan's factor.
            config_mult = 0.1 if norm == 'SSN' else 1.0
            assert keys['mean_weight']['lr_mult'] == pytest.approx(
                config_mult * plan.ratio_lr_mult)
        else:
            assert stats is None
            assert 'mean_weight' not in keys
        assert 'BatchStatsHook' not in hooks
    assert small.optim_wrapper.optimizer.lr == \
        large.optim_wrapper.optimizer.lr


def test_claims_preset_rejects_task_and_norm_selection(capsys):
    with pytest.raises(SystemExit):
        run_tool('run_suite', '--preset', 'claims', '--tasks', 'seg')
    assert 'drop --tasks/--norms' in capsys.readouterr().err


# End to end ----------------------------------------------------------------


def test_claims_smoke_end_to_end(tmp_path, capsys):
    """Data, every run of the smoke plan (forked, edited configs), the
    verdicts, claims.md and the three plots; a second call reuses every
    run."""
    assert claims.run_claims('claims-smoke', root=str(tmp_path), jobs=2) == 0
    out = capsys.readouterr().out
    suite_dir = tmp_path / 'work_dirs' / 'suite-claims-smoke'
    text = (suite_dir / 'claims.md').read_text()
    assert text in out
    for title in ('## Claim 1', '## Claim 2', '## Claim 3'):
        assert title in text
    # One seed: every verdict is "not shown", and says why.
    assert text.count('| **claim** | | | **not shown** |') == 3
    assert 'fewer than 3 seeds' in text
    for name in ('BN', 'GN', 'SN', 'SSN'):
        assert f'\n| {name} | ' in text
    for part in ('detection | backbone', 'detection | mask head',
                 'segmentation | decode head', 'video | backbone'):
        assert f'| {part} |' in text
    for png in ('claim1_metric.png', 'claim2_ratios.png',
                'claim3_profile.png'):
        assert (suite_dir / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert (tmp_path / 'data/claims-smoke_cityscapes/.generated').exists()

    assert claims.run_claims('claims-smoke', root=str(tmp_path)) == 0
    assert '10 runs, 10 already done' in capsys.readouterr().out
