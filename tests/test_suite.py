"""The benchmark suite end to end on the smoke preset, plus its helpers."""
import json
import os.path as osp

import pytest
from mmengine.config import Config

from ssn_norm.apis.launch import load_config
from ssn_norm.apis.train_test import (RESULT_FILE, scale_schedule,
                                      skip_final_validation)
from ssn_norm.suite import (FULL, HEADLINE, MINI, SUITE_NORMS, SUITE_TASKS,
                            run_suite, select_runs)


def test_every_preset_config_exists():
    for specs in (MINI, FULL):
        for task in SUITE_TASKS:
            assert set(specs[task].configs) == set(SUITE_NORMS)
            for path in specs[task].configs.values():
                assert osp.isfile(path), path


def test_select_runs_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown preset 'tiny'"):
        select_runs('tiny')
    with pytest.raises(ValueError, match=r"unknown task \['detection'\]"):
        select_runs('mini', tasks=['detection'])
    with pytest.raises(ValueError, match=r"unknown norm \['bn'\]"):
        select_runs('mini', norms=['bn'])
    runs = select_runs('mini', tasks=['video', 'det'], norms=['ssn'])
    assert [(r.task, r.norm) for r in runs] == [('det', 'ssn'),
                                                ('video', 'ssn')]


@pytest.mark.parametrize('loop,key', [('EpochBasedTrainLoop', 'max_epochs'),
                                      ('IterBasedTrainLoop', 'max_iters')])
def test_scale_schedule(loop, key):
    cfg = Config(
        dict(
            train_cfg=dict(
                type=loop, val_interval=7, val_begin=40, **{key: 40}),
            default_hooks=dict(checkpoint=dict(interval=40))))
    scale_schedule(cfg, 0.1)
    assert cfg.train_cfg[key] == 4
    assert cfg.train_cfg.val_interval == 4 and cfg.train_cfg.val_begin == 4
    assert cfg.default_hooks.checkpoint.interval == 4
    scale_schedule(cfg, 0.01)  # never below one epoch/iteration
    assert cfg.train_cfg[key] == 1
    with pytest.raises(ValueError, match='factor must be > 0'):
        scale_schedule(cfg, 0)


def test_plain_text_config_dumps_without_yapf(tmp_path, monkeypatch):
    """The suite's configs dump as plain Python that loads back the same;
    the tools' configs keep mmengine's yapf formatting."""
    import mmengine.config.config as mmengine_config
    path = MINI['det'].configs['sn']
    plain = load_config(path, format_python_code=False)
    formatted = load_config(path)

    def no_yapf(*args, **kwargs):
        raise AssertionError('yapf called')

    monkeypatch.setattr(mmengine_config, 'FormatCode', no_yapf)
    dumped = tmp_path / 'dumped.py'
    plain.dump(str(dumped))
    assert Config.fromfile(str(dumped)).to_dict() == formatted.to_dict()
    assert plain.filename == formatted.filename
    with pytest.raises(SyntaxError):  # mmengine's wrapping of the failure
        formatted.pretty_text


@pytest.mark.parametrize('task,norm',
                         [(t, n) for t in SUITE_TASKS for n in SUITE_NORMS])
def test_minis_skip_the_validation_the_test_repeats(task, norm):
    cfg = load_config(MINI[task].configs[norm])
    cfg.custom_hooks = list(cfg.get('custom_hooks',
                                    [])) + [dict(type='RngStateHook')]
    assert skip_final_validation(cfg)
    length = cfg.train_cfg.get('max_epochs', cfg.train_cfg.get('max_iters'))
    assert cfg.train_cfg.val_begin == length + 1


@pytest.mark.parametrize(
    'hook,skipped',
    [
        (dict(type='BatchStatsHook'), False),  # default stages=('val',)
        (dict(type='BatchStatsHook', stages=('val', 'test')), False),
        (dict(type='BatchStatsHook', stages='test'), True),
        (dict(type='EMAHook'), False),  # swaps weights around validation
        (dict(type='SyncBuffersHook'), True),
    ])
def test_validation_kept_for_hooks_that_act_on_it(hook, skipped):
    cfg = load_config(MINI['seg'].configs['sn'])
    cfg.custom_hooks = list(cfg.custom_hooks) + [hook]
    assert skip_final_validation(cfg) is skipped
    assert ('val_begin' in cfg.train_cfg) is skipped


def test_validation_kept_for_save_best():
    cfg = load_config(MINI['video'].configs['sn'])
    cfg.default_hooks.checkpoint.save_best = 'auto'
    assert not skip_final_validation(cfg)
    assert cfg.train_cfg.val_begin == 6  # the config's own


def test_smoke_suite_end_to_end(tmp_path, capsys):
    """One run per task: data in the real layouts, training, testing,
    leaderboard, ratio plots; a second call resumes (nothing re-run)."""
    failed = run_suite('smoke', norms=['sn'], root=str(tmp_path), jobs=2)
    out = capsys.readouterr().out
    assert failed == 0, out
    suite_dir = tmp_path / 'work_dirs' / 'suite-smoke'
    for data in ('tiny_coco/annotations/instances_val2017.json',
                 'tiny_cityscapes/gtFine/val', 'tiny_kinetics'):
        assert (tmp_path / 'data' / data).exists()
    metrics = {}
    for run in select_runs('smoke', norms=['sn']):
        record = json.loads((suite_dir / run.name / RESULT_FILE).read_text())
        metrics[run.task] = record['metrics']
        # A forked run's own CPU time, without the imports.
        assert 0 < record['cpu_seconds'] < 60
        # Only the test evaluated: no validation entry in the training log.
        (scalars, ) = (suite_dir / run.name).glob('*/vis_data/scalars.json')
        head = HEADLINE[run.task]
        assert head not in scalars.read_text() and head in metrics[run.task]
        png = suite_dir / f'ratios_{run.name}.png'
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 0 <= metrics['det']['coco/bbox_mAP'] <= 1
    assert 0 <= metrics['det']['coco/segm_mAP'] <= 1
    assert 0 <= metrics['seg']['mIoU'] <= 100
    assert 0 <= metrics['video']['acc/top1'] <= 1
    board = (suite_dir / 'leaderboard.md').read_text()
    for title in ('Detection', 'segmentation', 'Video'):
        assert title in board
    assert 'SN' in board

    mtimes = {p: p.stat().st_mtime for p in suite_dir.glob('*/' + RESULT_FILE)}
    assert run_suite('smoke', norms=['sn'], root=str(tmp_path)) == 0
    assert '3 runs, 3 already done' in capsys.readouterr().out
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes


def test_full_preset_trains_then_tests_under_torchrun(tmp_path, monkeypatch):
    """The full preset's commands: torchrun train.py with the seed, then
    test.py on the last checkpoint; a complete record afterwards."""
    from ssn_norm import suite
    (run, ) = select_runs('full', tasks=['seg'], norms=['sn'], seeds=2)[1:]
    work_dir = tmp_path / run.work_name
    calls = []

    def call(command, **kwargs):
        calls.append(command)
        if len(calls) == 1:  # training leaves a checkpoint
            (work_dir / 'iter_40000.pth').write_bytes(b'')
        return 0

    monkeypatch.setattr(suite.subprocess, 'call', call)
    record = suite.execute_run(run, str(work_dir), 'full', str(tmp_path), 4, 1,
                               1.0)
    assert record['status'] == 'done'
    train, test = calls
    assert train[1:4] == ['-m', 'torch.distributed.run', '--nproc_per_node=4']
    assert train[4].endswith('tools/train.py') and train[5] == run.config
    assert train[-2:] == ['--cfg-options', 'randomness.seed=1']
    assert test[4].endswith('tools/test.py')
    assert test[6] == str(work_dir / 'iter_40000.pth')
    assert test[-2:] == ['--launcher', 'pytorch']
