"""The benchmark suite: generate data, train and evaluate every (task,
normaliser) pair, then tabulate the results and draw the learned ratios.

Presets:

* ``mini``: tiny generated datasets in the real layouts (COCO instances,
  Cityscapes, Kinetics videos) and shrunk child configs of the real
  benchmark configs (``configs/*/mini/``), so every code path of a full run
  is exercised on one CPU machine.
* ``smoke``: ``mini`` with a tenth of the schedule, for the test suite.
* ``full``: the real benchmark configs on the real datasets (the upstream
  layouts under ``data/coco``, ``data/cityscapes``, ``data/kinetics400``),
  trained and tested with ``torch.distributed.run`` on ``gpus`` GPUs.

Every run gets ``<root>/work_dirs/suite-<preset>/<config name>``; with
``seeds > 1`` (``tools/run_suite.py --seeds N``) each config runs N times,
with ``randomness.seed`` 0 … N-1, in ``<config name>/seed-<k>``, and the
leaderboard shows each metric's mean ± standard deviation over the seeds.
Every preset runs one seed by default (the mini configs' own seed 0; the
full configs' own randomness).  A run is
done once its ``suite_result.json`` holds a complete record
(:func:`read_suite_result`); an interrupted run, or one whose record is
unreadable, resumes from its last checkpoint, so the same command continues
where it stopped.
"""
import glob
import json
import multiprocessing
import os
import os.path as osp
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .apis.train_test import RESULT_FILE

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SUITE_TASKS = ('det', 'seg', 'video')
SUITE_NORMS = ('baseline', 'gn', 'sn', 'ssn')
#: This module's presets; the claims presets, built on it, are
#: :mod:`ssn_norm.claims`'s (``tools/run_suite.py`` offers both).
PRESETS = ('mini', 'smoke', 'full')
# Metric shown in the one-line progress report of each task.
HEADLINE = {'det': 'coco/bbox_mAP', 'seg': 'mIoU', 'video': 'acc/top1'}


@dataclass
class TaskSpec:
    """One task of a preset: a config per normaliser, and how to get data."""
    configs: Dict[str, str]
    data_dir: Optional[str] = None  # relative to the suite root
    generator: Optional[str] = None  # 'module:function(root)'
    generator_kwargs: dict = field(default_factory=dict)


def _configs(folder: str,
             template: str,
             baseline: str,
             baseline_name: Optional[str] = None) -> Dict[str, str]:
    """Config paths per normaliser from a name template ({} = the norm)."""
    tokens = dict(baseline=baseline, gn='gn', sn='sn', ssn='ssn')
    names = {norm: template.format(tokens[norm]) for norm in SUITE_NORMS}
    if baseline_name is not None:
        names['baseline'] = baseline_name
    return {norm: f'{folder}/{name}.py' for norm, name in names.items()}


MINI = {
    'det':
    TaskSpec(
        configs=_configs('configs/mask_rcnn/mini',
                         'mask-rcnn_r18-{0}_fpn_{0}-head_mini_tiny-coco', '',
                         'mask-rcnn_r18_fpn_mini_tiny-coco'),
        data_dir='data/tiny_coco',
        generator='ssn_norm.datasets.tiny_coco:make_tiny_coco'),
    'seg':
    TaskSpec(
        configs=_configs('configs/fcn/mini',
                         'fcn-1conv_r18-d8-{}_mini_tiny-cityscapes', 'syncbn'),
        data_dir='data/tiny_cityscapes',
        generator='ssn_norm.datasets.tiny_cityscapes:make_tiny_cityscapes'),
    'video':
    TaskSpec(
        configs=_configs('configs/i3d/mini', 'i3d_r18-{}_mini_tiny-kinetics',
                         'bn'),
        data_dir='data/tiny_kinetics',
        generator='ssn_norm.datasets.tiny_kinetics:make_tiny_kinetics'),
}

FULL = {
    'det':
    TaskSpec(
        configs=_configs('configs/mask_rcnn',
                         'mask-rcnn_r50-{0}_fpn_{0}-head_2x_coco', '',
                         'mask-rcnn_r50_fpn_2x_coco')),
    'seg':
    TaskSpec(
        configs=dict(
            _configs('configs/fcn',
                     'fcn-1conv_r50b-d8-{}_8xb2-40k_cityscapes-713x713',
                     'syncbn'),
            # SN from the (8,32) ImageNet checkpoint; Table VII's (8,2) and
            # (8,4) rows have configs of their own.
            sn='configs/fcn/'
            'fcn-1conv_r50b-d8-sn-8x32_8xb2-40k_cityscapes-713x713.py')),
    'video':
    TaskSpec(
        configs=_configs(
            'configs/i3d',
            'i3d_imagenet-pretrained-r50-{}_8xb8-32x2x1-100e_kinetics400-rgb',
            'bn')),
}

SCHEDULE = {'mini': 1.0, 'smoke': 0.1, 'full': 1.0}


@dataclass
class RunSpec:
    """One run: a (task, normaliser) config, the seed it sets (``seeds >
    1``), and for the claims preset its setting and config edits."""
    task: str
    norm: str
    config: str  # absolute path
    seed: Optional[int] = None
    #: A sub-directory naming the run's setting (claims preset), e.g. '8x2'.
    setting: Optional[str] = None
    #: Config overrides, as ``--cfg-options`` (``merge_from_dict``).
    options: Dict[str, Any] = field(default_factory=dict)
    #: Called with the loaded config to change it in place (a module-level
    #: function or a ``functools.partial`` of one: it is pickled by name).
    edit: Optional[Callable] = None

    @property
    def name(self) -> str:
        """The config name."""
        return osp.splitext(osp.basename(self.config))[0]

    @property
    def work_name(self) -> str:
        """The work directory under the suite's: ``<config name>``, then
        ``/<setting>`` for a claims run and ``/seed-<k>`` for a seeded
        one."""
        parts = [self.name]
        if self.setting is not None:
            parts.append(self.setting)
        if self.seed is not None:
            parts.append(f'seed-{self.seed}')
        return osp.join(*parts)

    @property
    def overrides(self) -> Dict[str, Any]:
        """:attr:`options` plus the seed, as ``merge_from_dict`` keys."""
        options = dict(self.options)
        if self.seed is not None:
            options['randomness.seed'] = self.seed
        return options

    @property
    def cfg_options(self) -> List[str]:
        """``--cfg-options`` arguments that set the run's seed, if any."""
        if self.seed is None:
            return []
        return ['--cfg-options', f'randomness.seed={self.seed}']


def select_runs(preset: str,
                tasks: Sequence[str] = SUITE_TASKS,
                norms: Sequence[str] = SUITE_NORMS,
                seeds: int = 1) -> List[RunSpec]:
    """The (task, normaliser) runs of ``preset``, detection first.

    With ``seeds > 1`` every config appears ``seeds`` times, with seeds
    ``0 … seeds-1`` (seed-major within a config); with ``seeds == 1`` once,
    with the config's own seed.

    Raises:
        ValueError: an unknown preset, task or normaliser, or ``seeds``
            not a positive integer.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f'seeds must be a positive integer, got {seeds!r}')
    if preset not in PRESETS:
        raise ValueError(f'unknown preset {preset!r}; choose from {PRESETS} '
                         f'(the claims presets have their own runs: '
                         'ssn_norm.claims)')
    for value, valid, what in ((tasks, SUITE_TASKS, 'task'),
                               (norms, SUITE_NORMS, 'norm')):
        unknown = [v for v in value if v not in valid]
        if unknown:
            raise ValueError(f'unknown {what} {unknown}; choose from '
                             f'{", ".join(valid)}')
    specs = FULL if preset == 'full' else MINI
    seed_list = [None] if seeds == 1 else list(range(seeds))
    return [
        RunSpec(task, norm, osp.join(REPO_ROOT, specs[task].configs[norm]),
                seed) for task in SUITE_TASKS if task in tasks
        for norm in SUITE_NORMS if norm in norms for seed in seed_list
    ]


def prepare_data(preset: str, tasks: Sequence[str], root: str) -> None:
    """Generate the tiny datasets of ``tasks`` under ``root`` (once)."""
    if preset == 'full':
        return
    for task in tasks:
        spec = MINI[task]
        target = osp.join(root, spec.data_dir)
        marker = osp.join(target, '.generated')
        if osp.exists(marker):
            continue
        module, func = spec.generator.split(':')
        print(f'[suite] generating {spec.data_dir} ...', flush=True)
        getattr(import_module(module), func)(target, **spec.generator_kwargs)
        with open(marker, 'w') as f:
            f.write(spec.generator + '\n')


def _full_command(run: RunSpec, work_dir: str, gpus: int) -> List[str]:
    launch = [
        sys.executable, '-m', 'torch.distributed.run',
        f'--nproc_per_node={gpus}'
    ]
    train = launch + [
        osp.join(REPO_ROOT, 'tools', 'train.py'), run.config, '--work-dir',
        work_dir, '--launcher', 'pytorch'
    ] + run.cfg_options
    if glob.glob(osp.join(work_dir, '*.pth')):
        train.append('--resume')
    return train


def _last_checkpoint(work_dir: str) -> Optional[str]:
    marker = osp.join(work_dir, 'last_checkpoint')
    if osp.exists(marker):
        with open(marker) as f:
            path = f.read().strip()
        if osp.exists(path):
            return path
    found = sorted(glob.glob(osp.join(work_dir, '*.pth')), key=osp.getmtime)
    return found[-1] if found else None


def read_suite_result(work_dir: str) -> Optional[dict]:
    """The run's complete ``suite_result.json`` record, else None.

    Complete means a JSON object with the run's ``config`` (a string) and
    its ``metrics`` (an object), as ``train_and_test``
    (:mod:`ssn_norm.apis.train_test`) and the full preset write it.  A
    missing file means the run has not finished (None, no warning); an
    unreadable, truncated or incomplete one (a run killed while writing it,
    a full disk) is warned about with a
    :class:`~ssn_norm.analysis.ResultWarning` and also gives None, so the
    run counts as not done and is run again (resuming from its last
    checkpoint).
    """
    from .analysis.runs import ResultWarning
    path = osp.join(work_dir, RESULT_FILE)
    if not osp.exists(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = f'unreadable ({error})'
    else:
        if not isinstance(record, dict):
            problem = f'not a JSON object but {type(record).__name__}'
        elif not isinstance(record.get('config'), str) or not isinstance(
                record.get('metrics'), dict):
            keys = ', '.join(sorted(record)) or 'no key'
            problem = ('incomplete: needs "config" (a string) and "metrics" '
                       f'(an object), has {keys}')
        else:
            return record
    warnings.warn(
        f'{path}: {problem}; the run is not done and will be run again',
        ResultWarning,
        stacklevel=2)
    return None


def _write_json_atomically(path: str, record: dict) -> None:
    # A kill while writing leaves the old file or none, never half a file.
    partial = f'{path}.partial'
    with open(partial, 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=2)
    os.replace(partial, path)


#: Modules the CPU presets' runs import.  A fork server imports them once
#: and forks every run from itself (:func:`_fork_context`), so no run pays
#: the seconds of importing torch and the three toolboxes again.
PRELOAD = ('ssn_norm', 'ssn_norm.apis.train_test', 'mmengine.runner',
           'mmdet.models', 'mmseg.models', 'mmaction.models',
           'ssn_norm.convert.inflate_i3d', 'pycocotools.cocoeval')


def _fork_context():
    """multiprocessing's fork server, preloaded with :data:`PRELOAD`, or
    None where the platform has none (each run is then a new
    interpreter)."""
    if 'forkserver' not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context('forkserver')
    context.set_forkserver_preload(list(PRELOAD))
    return context


def _train_and_test_child(root: str, config: str, work_dir: str, options: dict,
                          edit: Optional[Callable], schedule: float,
                          threads: int, log_path: str) -> None:
    """A forked run: in ``root`` (the configs' data roots are relative to
    it), its output to ``log_path``, ``threads`` intra-op threads, then
    :func:`~ssn_norm.apis.train_test.train_and_test`."""
    os.chdir(root)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, 'w', buffering=1, closefd=False)
    sys.stderr = open(2, 'w', buffering=1, closefd=False)
    os.environ.update(_thread_env(threads))
    import torch
    torch.set_num_threads(threads)
    from .apis.train_test import train_and_test
    train_and_test(config, work_dir, options, schedule, edit)


def _thread_env(threads: int) -> Dict[str, str]:
    return dict(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONUNBUFFERED='1')


def _train_and_test(run: RunSpec, work_dir: str, root: str, threads: int,
                    schedule: float, log_path: str) -> int:
    """Train and test one CPU run in a child process; its exit code."""
    context = _fork_context()
    if context is None:
        command = [
            sys.executable, '-m', 'ssn_norm.apis.train_test', run.config,
            '--work-dir', work_dir, '--schedule',
            str(schedule)
        ] + run.cfg_options
        if run.options or run.edit is not None:
            raise RuntimeError(
                f'{run.work_name}: config edits need the fork server, which '
                'this platform lacks')
        with open(log_path, 'a') as log:
            return subprocess.call(
                command,
                cwd=root,
                env=dict(os.environ, **_thread_env(threads)),
                stdout=log,
                stderr=subprocess.STDOUT)
    child = context.Process(
        target=_train_and_test_child,
        args=(root, run.config, work_dir, run.overrides, run.edit, schedule,
              threads, log_path),
        name=run.work_name)
    child.start()
    child.join()
    return child.exitcode


def execute_run(run: RunSpec, work_dir: str, preset: str, root: str, gpus: int,
                threads: int, schedule: float) -> dict:
    """Train and test one run in child processes; returns its record.

    The record has ``status`` 'done' (with ``metrics``) or 'failed' (with
    the tail of the log); the run's full output is in ``suite.log``.
    """
    os.makedirs(work_dir, exist_ok=True)
    log_path = osp.join(work_dir, 'suite.log')
    open(log_path, 'a').close()  # there even if the child fails to start
    start = time.perf_counter()
    if preset != 'full':
        code = _train_and_test(run, work_dir, root, threads, schedule,
                               log_path)
    else:
        env = dict(os.environ, **_thread_env(threads))
        train = _full_command(run, work_dir, gpus)
        with open(log_path, 'a') as log:
            code = subprocess.call(
                train, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
            if code == 0:
                checkpoint = _last_checkpoint(work_dir)
                test = train[:4] + [
                    osp.join(REPO_ROOT, 'tools', 'test.py'), run.config,
                    str(checkpoint), '--work-dir', work_dir, '--launcher',
                    'pytorch'
                ]
                code = subprocess.call(
                    test,
                    cwd=root,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT)
        if code == 0:
            _write_json_atomically(
                osp.join(work_dir, RESULT_FILE),
                dict(config=run.config, metrics={}))
    seconds = time.perf_counter() - start
    if code != 0:
        with open(log_path) as f:
            tail = ''.join(f.readlines()[-25:])
        if not tail:
            tail = ('the run\'s process ended before its first output; see '
                    'the messages above (a script calling run_suite must do '
                    "so under `if __name__ == '__main__':`, as the runs' "
                    'processes import it)\n')
        return dict(
            status='failed',
            seconds=seconds,
            log=log_path,
            tail=f'(exit code {code})\n' + tail)
    record = read_suite_result(work_dir)
    if record is None:
        return dict(
            status='failed',
            seconds=seconds,
            log=log_path,
            tail=f'exited 0 without a complete {RESULT_FILE} in {work_dir}')
    record.update(status='done', seconds=seconds)
    return record


def plot_run_ratios(work_dir: str,
                    name: str,
                    out_dir: Optional[str] = None) -> Optional[str]:
    """Per-layer ratio plot of a run's final checkpoint, written to
    ``out_dir/ratios_<name>.png`` (default: beside the run); None when the
    run has no checkpoint."""
    from .analysis import checkpoint_ratios, plot_layer_ratios
    checkpoint = _last_checkpoint(work_dir)
    if checkpoint is None:
        return None
    out = osp.join(out_dir or osp.dirname(work_dir), f'ratios_{name}.png')
    plot_layer_ratios([(name, checkpoint_ratios(checkpoint))], out)
    return out


def _describe(run: RunSpec) -> str:
    setting = '' if run.setting is None else f' {run.setting}'
    seed = '' if run.seed is None else f' seed {run.seed}'
    return f'{run.task:5s} {run.norm:8s}{setting}{seed}'


def execute_runs(runs: Sequence[RunSpec],
                 suite_dir: str,
                 preset: str,
                 root: str,
                 jobs: int = 2,
                 gpus: int = 8,
                 schedule: float = 1.0) -> Tuple[List[RunSpec], List[RunSpec]]:
    """Train and test the runs of ``runs`` not done yet, ``jobs`` at a
    time, in the given order; print each outcome as it comes.

    A run is done when ``suite_dir/<work name>`` holds a complete record
    (:func:`read_suite_result`); runs done before are not repeated.  On
    CPU (every preset but ``full``) each run gets ``cpus // jobs`` threads.

    Returns:
        ``(done, failed)``: the runs done by the end, and those that failed.
    """
    from mmengine.utils import ProgressBar

    jobs = 1 if preset == 'full' else max(1, jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    done = {
        r.work_name
        for r in runs
        if read_suite_result(osp.join(suite_dir, r.work_name)) is not None
    }
    pending = [r for r in runs if r.work_name not in done]
    print(
        f'[suite] {preset}: {len(runs)} runs, {len(runs) - len(pending)} '
        f'already done; {jobs} at a time, {threads} thread(s) each; logs '
        f'in {suite_dir}/<run>/suite.log',
        flush=True)
    start = time.perf_counter()
    failed = []
    progress = ProgressBar(len(pending)) if pending else None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {}
        for run in pending:
            work_dir = osp.join(suite_dir, run.work_name)
            future = pool.submit(execute_run, run, work_dir, preset, root,
                                 gpus, threads, schedule)
            futures[future] = run
        for future in as_completed(futures):
            run = futures[future]
            record = future.result()
            if record['status'] == 'done':
                done.add(run.work_name)
                value = record.get('metrics', {}).get(HEADLINE[run.task])
                shown = '' if value is None else \
                    f', {HEADLINE[run.task]} = {value:.4g}'
                cpu = record.get('cpu_seconds')
                cpu = '' if cpu is None else f' (CPU {cpu:.0f} s)'
                message = (f'{_describe(run)} done in '
                           f'{record["seconds"]:.0f} s{cpu}{shown}')
            else:
                failed.append(run)
                message = (f'{_describe(run)} FAILED after '
                           f'{record["seconds"]:.0f} s; end of '
                           f'{record["log"]}:\n{record["tail"]}')
            print(f'\n[suite] {message}', flush=True)
            progress.update()
    print(
        f'\n[suite] finished in {time.perf_counter() - start:.0f} s',
        flush=True)
    return [r for r in runs if r.work_name in done], failed


def run_suite(preset: str = 'mini',
              tasks: Sequence[str] = SUITE_TASKS,
              norms: Sequence[str] = SUITE_NORMS,
              root: str = '.',
              jobs: int = 2,
              gpus: int = 8,
              seeds: Optional[int] = None) -> int:
    """Run the suite; print progress and the leaderboard.

    ``seeds`` runs every config that many times (see :func:`select_runs`;
    default once); the ratio plots show each config's first seed.  The
    claims presets are :func:`ssn_norm.claims.run_claims`'.

    Returns the number of failed runs (0 when everything succeeded).
    """
    from .analysis import gather, write_leaderboard

    seeds = 1 if seeds is None else seeds
    root = osp.abspath(root)
    runs = select_runs(preset, tasks, norms, seeds)
    suite_dir = osp.join(root, 'work_dirs', f'suite-{preset}')
    os.makedirs(suite_dir, exist_ok=True)
    prepare_data(preset, tasks, root)
    done, failed = execute_runs(runs, suite_dir, preset, root, jobs, gpus,
                                SCHEDULE[preset])
    for run in done:
        if run.norm in ('sn', 'ssn') and run.seed in (None, 0):
            work_dir = osp.join(suite_dir, run.work_name)
            out = plot_run_ratios(work_dir, run.name, suite_dir)
            if out:
                print(f'[suite] ratios of {run.name}: {out}')
    board = gather([
        osp.join(suite_dir, r.work_name)
        for r in runs if osp.isdir(osp.join(suite_dir, r.work_name))
    ], [osp.join(REPO_ROOT, 'model-index.yml')])
    leaderboard = osp.join(suite_dir, 'leaderboard.md')
    write_leaderboard(board, leaderboard)
    print(board.to_markdown(), end='')
    print(f'[suite] leaderboard written to {leaderboard}')
    return len(failed)
