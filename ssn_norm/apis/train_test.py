"""Train a config, then test the trained model in the same process.

The benchmark suite runs every (task, normaliser) pair through this: the
same config handling as ``tools/train.py`` (:func:`apply_train_options`)
and the same Runner, without paying the import cost of a second process
for testing.  Test metrics land where ``tools/test.py`` puts them:
``<work_dir>/<timestamp>/<timestamp>.json``.

The validations inside the training loop are dropped when no hook needs
them (:func:`skip_final_validation`): the test repeats them.

Run as ``python -m ssn_norm.apis.train_test CONFIG --work-dir DIR``.
"""
import argparse
import glob
import json
import os
import os.path as osp
import resource
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence

from mmengine.config import Config, DictAction

RESULT_FILE = 'suite_result.json'


def scale_schedule(cfg: Config, factor: float) -> None:
    """Shorten (or lengthen) the training loop of ``cfg`` by ``factor``.

    Epoch- and iteration-based loops alike: the length becomes
    ``max(1, round(length * factor))`` and validation and checkpointing
    happen at the new end, so a shortened run still evaluates and saves.
    """
    if not factor > 0:
        raise ValueError(f'schedule factor must be > 0, got {factor}')
    train_cfg = cfg.train_cfg
    key = 'max_epochs' if 'max_epochs' in train_cfg else 'max_iters'
    if key not in train_cfg:
        raise ValueError('cannot scale a train_cfg without max_epochs or '
                         f'max_iters: {dict(train_cfg)}')
    length = max(1, round(train_cfg[key] * factor))
    train_cfg[key] = length
    train_cfg['val_interval'] = length
    if 'val_begin' in train_cfg:
        train_cfg['val_begin'] = min(train_cfg['val_begin'], length)
    checkpoint = cfg.get('default_hooks', {}).get('checkpoint')
    if checkpoint is not None:
        checkpoint['interval'] = length


#: Hooks whose validation-stage methods change nothing a test after
#: training sees: they time, log, draw when asked, restore the random
#: generators (RngStateHook) or, in a single process as here, do nothing
#: (SyncNormStatsHook, SyncBuffersHook); or they have no
#: validation-stage method at all.
#: CheckpointHook and BatchStatsHook are judged by their settings
#: (:func:`_neutral_at_validation`).
VALIDATION_NEUTRAL_HOOKS = frozenset({
    'RuntimeInfoHook', 'IterTimerHook', 'LoggerHook', 'ParamSchedulerHook',
    'DistSamplerSeedHook', 'DetVisualizationHook', 'SegVisualizationHook',
    'VisualizationHook', 'RngStateHook', 'SyncNormStatsHook',
    'SyncBuffersHook', 'SparsestMaxRadiusHook', 'RatioLoggerHook'
})


def _neutral_at_validation(hook: dict) -> bool:
    kind = hook.get('type')
    name = kind if isinstance(kind, str) else getattr(kind, '__name__', '')
    if name == 'CheckpointHook':
        return not hook.get('save_best')
    if name == 'BatchStatsHook':
        stages = hook.get('stages', ('val', ))
        return 'val' not in ((stages, ) if isinstance(stages, str) else stages)
    return name in VALIDATION_NEUTRAL_HOOKS


def skip_final_validation(cfg: Config) -> bool:
    """Drop the training loop's validations when only the test counts.

    The suite reports the test after training, which (in the minis)
    evaluates the validation images again.  The validations are dropped
    (``train_cfg.val_begin`` past the end) only when every hook of the
    config is neutral at validation (:data:`VALIDATION_NEUTRAL_HOOKS`, a
    ``CheckpointHook`` without ``save_best``, a ``BatchStatsHook`` without
    the ``'val'`` stage): then the test sees the same model either way.
    Any other hook, e.g. one computing statistics before validation that
    the test would then use, keeps them.

    Returns whether they were dropped.
    """
    hooks = list(cfg.get('custom_hooks') or [])
    hooks += [h for h in (cfg.get('default_hooks') or {}).values() if h]
    if not all(_neutral_at_validation(hook) for hook in hooks):
        return False
    train_cfg = cfg.train_cfg
    key = 'max_epochs' if 'max_epochs' in train_cfg else 'max_iters'
    if key not in train_cfg:
        return False
    train_cfg['val_begin'] = train_cfg[key] + 1
    return True


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far, in seconds (a
    forked process counts from its fork)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_and_test(config: str,
                   work_dir: str,
                   cfg_options: Optional[dict] = None,
                   schedule: float = 1.0,
                   edit: Optional[Callable[[Config], Any]] = None) -> Dict:
    """Train ``config`` in ``work_dir`` (resuming from its last checkpoint if
    one is there), test the final model and write ``RESULT_FILE`` there.

    Args:
        config: config file.
        work_dir: the run's directory.
        cfg_options: overrides, as ``--cfg-options`` of ``tools/train.py``.
        schedule: factor applied to the training length
            (:func:`scale_schedule`).
        edit: called with the loaded config (after ``cfg_options`` and
            ``schedule``) to change it in place, e.g. the claims preset's
            settings (:mod:`ssn_norm.claims`).

    Returns the record written: config, metrics, seconds for each phase and
    ``cpu_seconds``, the process's CPU time (user + system) at the end.
    """
    import ssn_norm  # noqa: F401  registers the plugin in this process
    from .launch import apply_train_options, build_runner, load_config

    # Plain-text config dumps: yapf costs seconds per dump (load_config).
    cfg = load_config(config, cfg_options, format_python_code=False)
    if schedule != 1.0:
        scale_schedule(cfg, schedule)
    if edit is not None:
        edit(cfg)
    skip_final_validation(cfg)
    resume = 'auto' if glob.glob(osp.join(work_dir, '*.pth')) else None
    apply_train_options(cfg, config, work_dir=work_dir, resume=resume)
    runner = build_runner(cfg, training=True)
    start = time.perf_counter()
    runner.train()
    trained = time.perf_counter()
    metrics = runner.test()
    tested = time.perf_counter()
    record = dict(
        config=osp.abspath(config),
        metrics={
            k: float(v)
            for k, v in metrics.items() if isinstance(v, (int, float))
        },
        train_seconds=round(trained - start, 1),
        test_seconds=round(tested - trained, 1),
        cpu_seconds=round(cpu_seconds(), 1),
        resumed=resume is not None,
        log_dir=runner.log_dir)
    # Written whole or not at all: the suite takes a run with this file as
    # done, and a kill must not leave half a record behind.
    path = osp.join(work_dir, RESULT_FILE)
    with open(f'{path}.partial', 'w') as f:
        json.dump(record, f, indent=2)
    os.replace(f'{path}.partial', path)
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs :func:`train_and_test` as ``argv`` (default: the command line)
    asks; returns 0 once the record is written."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parser.add_argument('--schedule', type=float, default=1.0)
    args = parser.parse_args(argv)
    train_and_test(args.config, args.work_dir, args.cfg_options, args.schedule)
    return 0


if __name__ == '__main__':
    sys.exit(main())
