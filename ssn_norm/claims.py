"""The claims preset: the SN paper's claims tested at small scale.

``tools/run_suite.py --preset claims`` runs one experiment per claim and
writes ``work_dirs/suite-claims/claims.md`` (one table per claim: setting,
numbers, verdict) and PNG plots beside it.  The decision rules are in
:mod:`ssn_norm.analysis.claims`; the design, fixed before any run:

**Claim 1** (BN degrades as the images per GPU shrink, while GN and SN
hold; the paper's Table II).  Segmentation: the mini configs of Table
VII's model (children of the Cityscapes paper-row configs) with BN (per
GPU, not synchronised), GN, SN and SSN, trained from scratch on tiny
Cityscapes-layout scenes whose images vary in contrast, brightness,
illumination gradient and colour cast (``make_tiny_cityscapes(...,
photometric=True)``), in two batch settings that hold the optimisation
fixed and change only the batch the statistics are computed over, as the
paper's (8,2) and (1,16) columns do: 16 images per optimizer step either
as 8 "GPUs" × 2 images (8 micro-batches of 2 accumulated into one step,
mmengine's ``accumulative_counts``: each micro-batch normalises with its
own statistics, exactly as each GPU does) or 1 × 16.  The same steps,
learning rate, schedule, images seen and seeds in both; 3 seeds each.
BN is evaluated with its moving averages, SN and SSN with batch-average
statistics (their configs' ``BatchStatsHook``, once training ends: one
pass over the training set in training-size batches), as the paper does.
Metric: mIoU of the single test after training.

**Claim 2** (SN lowers its BN ratio and raises LN's at small batch): the
ratios of the claim-1 SN runs at their end, per setting, averaged over
layers (mean and variance ratios alike) and seeds.

**Claim 3** (different tasks and parts choose different normalisers):
SN's ratio profile per task and per part (backbone, neck, heads): the
detection and video SN minis (3 seeds each) and the claim-1 SN runs at 2
images per GPU (segmentation, as in the paper's tables).

The ratio logits of every SN run here learn :attr:`Plan.ratio_lr_mult`
times faster than their configs say: at the configs' rate they move by
about 0.001–0.01 from 1/3 in a mini run, while the paper's runs are
thousands of times longer.  One factor for every SN run and both
settings; it was sized before any claims run, from how far the mini
runs' ratios moved, not from which way.

Config names appear only through :data:`ssn_norm.suite.MINI` and the
tables :data:`CLAIM1_NORMS` / :data:`CLAIM3_TASKS` here.
"""
import dataclasses
import functools
import math
import os
import os.path as osp
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .suite import (MINI, REPO_ROOT, RunSpec, _last_checkpoint, execute_runs,
                    prepare_data, read_suite_result)

#: Claim 1's task (a key of MINI) and metric.
CLAIM1_TASK = 'seg'
CLAIM1_METRIC = ('mIoU', 'mIoU (%)')
#: Claim 1's normalisers: the name shown → the key of the task's config
#: in MINI.  BN is the seg baseline: SyncBN, which mmengine turns into BN
#: on one process, i.e. per-"GPU" statistics here.  SSN: the issue's "if
#: the budget allows"; the rule was written for every member of this table
#: ("BN degrades more than X" for each other X).
CLAIM1_NORMS = {'BN': 'baseline', 'GN': 'gn', 'SN': 'sn', 'SSN': 'ssn'}
#: Claim 3's extra runs: task → the key of its SN config in MINI.
#: Segmentation's profile comes from the claim-1 SN runs at SMALL.
CLAIM3_TASKS = {'det': 'sn', 'video': 'sn'}
TASK_TITLES = {'det': 'detection', 'seg': 'segmentation', 'video': 'video'}
#: Readable part names of a layer's top-level module (roi_head: its
#: child).
PART_NAMES = {
    'backbone': 'backbone',
    'neck': 'FPN',
    'rpn_head': 'RPN head',
    'bbox_head': 'box head',
    'mask_head': 'mask head',
    'decode_head': 'decode head',
    'auxiliary_head': 'aux head',
    'cls_head': 'cls head',
}
#: Claim 3's detection comparison: BN weighs more in the first parts
#: than in the second (the paper's §4.2, Fig. 11).
DET_BN_HEAVY = ('backbone', 'box head')
DET_BN_LIGHT = ('FPN', 'mask head')


@dataclass(frozen=True)
class Setting:
    """A batch setting: ``gpus`` × ``images`` per GPU, as the paper
    writes it, simulated on one process by ``gpus`` accumulated
    micro-batches of ``images``."""
    gpus: int
    images: int

    @property
    def key(self) -> str:
        return f'{self.gpus}x{self.images}'

    @property
    def title(self) -> str:
        return f'({self.gpus},{self.images})'


#: Claim 1's settings: the paper's (8,2) and (1,16), 16 images a step.
SMALL = Setting(8, 2)
LARGE = Setting(1, 16)
SETTINGS = (LARGE, SMALL)


@dataclass(frozen=True)
class Plan:
    """The size of a claims run.

    Attributes:
        steps: optimizer steps of every claim-1 run (16 images each).
        seeds: seeds per (normaliser, setting) and per claim-3 task.
        num_train: training images of the claim-1 data.
        num_val: test images of the claim-1 data.
        claim3_schedule: factor on the det/video minis' schedules.
        ratio_lr_mult: learning-rate factor of every SN ratio logit.
        data_dir: where claim 1's data is generated, relative to the
            suite root.
        subset: if set, the claim-3 runs train on that many images.
    """
    steps: int
    seeds: int
    num_train: int
    num_val: int
    claim3_schedule: float
    ratio_lr_mult: float
    data_dir: str
    subset: Optional[int] = None


_CLAIMS = Plan(
    steps=120,
    seeds=3,
    num_train=64,
    num_val=24,
    claim3_schedule=1.0,
    ratio_lr_mult=50.,
    data_dir='data/claims_cityscapes')
PLANS = {
    'claims':
    _CLAIMS,
    # The whole pipeline in seconds; its verdicts are "not shown".
    'claims-smoke':
    dataclasses.replace(
        _CLAIMS,
        steps=2,
        seeds=1,
        num_train=16,
        num_val=2,
        claim3_schedule=0.25,
        data_dir='data/claims-smoke_cityscapes',
        subset=8),
}

# Config edits (run in the forked child; module-level so they pickle) ---


def set_iterations(cfg, iterations: int) -> None:
    """An iteration-based run of ``iterations`` iterations: the loop, its
    validation and checkpoint at the end, and every iteration-based
    scheduler's bounds and milestones scaled alike.

    Raises:
        ValueError: the config's loop is not iteration-based.
    """
    train_cfg = cfg.train_cfg
    if 'max_iters' not in train_cfg:
        raise ValueError('the claims preset needs an iteration-based '
                         f'train_cfg (max_iters), got {dict(train_cfg)}')
    factor = iterations / train_cfg.max_iters
    train_cfg.max_iters = iterations
    train_cfg.val_interval = iterations
    schedulers = cfg.get('param_scheduler') or []
    if isinstance(schedulers, dict):
        schedulers = [schedulers]
    for scheduler in schedulers:
        if scheduler.get('by_epoch', True):
            continue
        for key in ('begin', 'end'):
            if key in scheduler:
                scheduler[key] = min(
                    round(scheduler[key] * factor), iterations)
        if 'milestones' in scheduler:
            scheduler.milestones = [
                round(m * factor) for m in scheduler.milestones
            ]
    hooks = cfg.get('default_hooks', {})
    if hooks.get('checkpoint') is not None:
        hooks.checkpoint.interval = iterations
    if hooks.get('logger') is not None:
        hooks.logger.interval = max(
            1, min(iterations, round(hooks.logger.interval * factor)))


def set_data_root(cfg, data_root: str) -> None:
    """Every loader of ``cfg`` reads ``data_root``."""
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(loader) is not None:
            cfg[loader].dataset.data_root = data_root


def scale_ratio_lr(cfg, factor: float) -> None:
    """The ratio logits (``mean_weight``, ``var_weight``) learn ``factor``
    times faster than the config says (``paramwise_cfg.custom_keys``)."""
    paramwise = cfg.optim_wrapper.setdefault('paramwise_cfg', {})
    keys = paramwise.setdefault('custom_keys', {})
    for name in ('mean_weight', 'var_weight'):
        entry = keys.setdefault(name, {})
        entry['lr_mult'] = entry.get('lr_mult', 1.0) * factor


def edit_claim1(cfg,
                setting: Setting,
                steps: int,
                data_root: str,
                ratio_lr_mult: Optional[float] = None) -> None:
    """Claim 1's run of a mini config in ``setting`` (see the module).

    ``steps`` optimizer steps of ``setting.gpus`` accumulated micro-batches
    of ``setting.images`` images each; SN and SSN runs also get
    :func:`scale_ratio_lr`.  SN and SSN test with batch-average statistics by
    the configs' own default (``default_hooks.batch_stats``: once training
    ends, one pass over the training set in batches of the training size).
    """
    set_data_root(cfg, data_root)
    cfg.train_dataloader.batch_size = setting.images
    set_iterations(cfg, steps * setting.gpus)
    cfg.optim_wrapper.accumulative_counts = setting.gpus
    if ratio_lr_mult is not None:
        scale_ratio_lr(cfg, ratio_lr_mult)


def edit_claim3(cfg,
                ratio_lr_mult: float,
                schedule: float = 1.0,
                subset: Optional[int] = None) -> None:
    """Claim 3's run of an SN mini: faster ratio logits, the schedule
    scaled by ``schedule`` (:func:`~ssn_norm.apis.train_test.
    scale_schedule`), and for the smoke plan only the first ``subset``
    images of each split."""
    from .apis.train_test import scale_schedule
    scale_ratio_lr(cfg, ratio_lr_mult)
    if schedule != 1.0:
        scale_schedule(cfg, schedule)
    if subset is not None:
        for loader in ('train_dataloader', 'val_dataloader',
                       'test_dataloader'):
            cfg[loader].dataset.indices = subset


# The run matrix ----------------------------------------------------------


def claim1_runs(plan: Plan, root: str) -> List[RunSpec]:
    """Claim 1's runs: every normaliser × setting × seed, SN first (the
    longest runs start first)."""
    configs = MINI[CLAIM1_TASK].configs
    data_root = osp.join(root, plan.data_dir) + '/'
    runs = []
    order = sorted(CLAIM1_NORMS, key=lambda n: n not in ('SN', 'SSN'))
    for norm in order:
        switchable = norm in ('SN', 'SSN')
        for setting in SETTINGS:
            edit = functools.partial(
                edit_claim1,
                setting=setting,
                steps=plan.steps,
                data_root=data_root,
                ratio_lr_mult=plan.ratio_lr_mult if switchable else None)
            for seed in range(plan.seeds):
                runs.append(
                    RunSpec(
                        CLAIM1_TASK,
                        norm,
                        osp.join(REPO_ROOT, configs[CLAIM1_NORMS[norm]]),
                        seed=seed,
                        setting=setting.key,
                        edit=edit))
    return runs


def claim3_runs(plan: Plan) -> List[RunSpec]:
    """Claim 3's own runs: the SN mini of each task in
    :data:`CLAIM3_TASKS`, ``plan.seeds`` seeds."""
    edit = functools.partial(
        edit_claim3,
        ratio_lr_mult=plan.ratio_lr_mult,
        schedule=plan.claim3_schedule,
        subset=plan.subset)
    return [
        RunSpec(
            task,
            'SN',
            osp.join(REPO_ROOT, MINI[task].configs[key]),
            seed=seed,
            setting='claim3',
            edit=edit) for task, key in CLAIM3_TASKS.items()
        for seed in range(plan.seeds)
    ]


def claims_runs(plan: Plan, root: str) -> List[RunSpec]:
    """Every run of the preset, in the order they start: detection's
    claim-3 runs (the longest), claim 1, then video's."""
    claim3 = claim3_runs(plan)
    first = [r for r in claim3 if r.task == 'det']
    last = [r for r in claim3 if r.task != 'det']
    return first + claim1_runs(plan, root) + last


def prepare_claims_data(plan: Plan, root: str) -> None:
    """Claim 1's Cityscapes-layout data with photometric variation, and
    the minis' data of the claim-3 tasks, under ``root`` (once)."""
    from .datasets.tiny_cityscapes import make_tiny_cityscapes
    target = osp.join(root, plan.data_dir)
    marker = osp.join(target, '.generated')
    wanted = (f'make_tiny_cityscapes(num_train={plan.num_train}, '
              f'num_val={plan.num_val}, photometric=True)\n')
    if osp.exists(marker):
        with open(marker) as f:
            made = f.read()
        if made != wanted:
            raise RuntimeError(
                f'{target} was generated as {made.strip()}, this plan needs '
                f'{wanted.strip()}; delete {target} (and the claims work '
                'directory, whose runs used it) or use another --root')
    else:
        print(f'[suite] generating {plan.data_dir} ...', flush=True)
        make_tiny_cityscapes(
            target,
            num_train=plan.num_train,
            num_val=plan.num_val,
            photometric=True)
        with open(marker, 'w') as f:
            f.write(wanted)
    prepare_data('mini', tuple(CLAIM3_TASKS), root)


# Reading the runs back -----------------------------------------------------


def part_of(name: str) -> str:
    """The part of a layer: backbone, FPN, a head (:data:`PART_NAMES`)."""
    parts = name.split('.')
    key = parts[1] if parts[0] == 'roi_head' and len(parts) > 1 else parts[0]
    return PART_NAMES.get(key, key)


def run_layers(work_dir: str) -> Optional[list]:
    """The SN layers' ratios at the end of the run in ``work_dir``."""
    from .analysis import checkpoint_ratios
    checkpoint = _last_checkpoint(work_dir)
    return None if checkpoint is None else checkpoint_ratios(checkpoint)


@dataclass
class Collected:
    """What the claims need from the runs."""
    metric: Dict[Tuple[str, str], list]
    #: ``shares[setting][normaliser]``: per-seed layer shares (claim 2).
    shares: Dict[str, Dict[str, list]]
    #: ``layers[task]``: per seed, the ratios of every layer (claim 3).
    layers: Dict[str, list]


def collect(runs: Sequence[RunSpec], suite_dir: str) -> Collected:
    """Metrics and ratios of the done runs among ``runs``."""
    from .analysis.claims import shares_of
    metric: Dict[Tuple[str, str], list] = {
        (norm, s.key): []
        for norm in CLAIM1_NORMS
        for s in SETTINGS
    }
    shares: Dict[str, Dict[str, list]] = {
        s.key: {
            n: []
            for n in ('IN', 'LN', 'BN')
        }
        for s in SETTINGS
    }
    layers: Dict[str, list] = {
        task: []
        for task in (*CLAIM3_TASKS, CLAIM1_TASK)
    }
    for run in runs:
        work_dir = osp.join(suite_dir, run.work_name)
        record = read_suite_result(work_dir)
        if record is None:
            continue
        if run.setting == 'claim3':
            found = run_layers(work_dir)
            if found:
                layers[run.task].append(found)
            continue
        value = record['metrics'].get(CLAIM1_METRIC[0], math.nan)
        metric[(run.norm, run.setting)].append(value)
        if run.norm == 'SN':
            found = run_layers(work_dir)
            if not found:
                continue
            for norm, share in shares_of(found).items():
                shares[run.setting][norm].append(share)
            if run.setting == SMALL.key:
                layers[CLAIM1_TASK].append(found)
    return Collected(metric, shares, layers)


def _by_part(layers: Sequence) -> Dict[str, list]:
    parts: Dict[str, list] = {}
    for layer in layers:
        parts.setdefault(part_of(layer.name), []).append(layer)
    return parts


def analyse(collected: Collected, out_dir: str, header: str) -> str:
    """Verdicts, tables (``claims.md``) and plots in ``out_dir``; returns
    the markdown."""
    from .analysis import claims as rules
    S = rules.Summary.of
    metric = {key: S(values) for key, values in collected.metric.items()}
    shares = {
        setting: {
            norm: S(v)
            for norm, v in by_norm.items()
        }
        for setting, by_norm in collected.shares.items()
    }
    result1 = rules.claim1(metric, SMALL.key, LARGE.key)
    result2 = rules.claim2(shares, SMALL.key, LARGE.key)

    # Claim 3: per task, per part, per seed.
    task_shares, profiles, part_rows, part_layers = {}, [], [], []
    for task in ('det', 'seg', 'video'):
        seeds = collected.layers.get(task) or []
        title = TASK_TITLES[task]
        task_shares[title] = {
            norm: S(rules.layer_share(lay, norm) for lay in seeds)
            for norm in rules.SHARES
        }
        names: List[str] = []
        for lay in seeds:
            for part in _by_part(lay):
                if part not in names:
                    names.append(part)
        parts = []
        for part in names:
            values = {
                norm:
                S(
                    rules.layer_share(_by_part(lay).get(part, []), norm)
                    for lay in seeds if _by_part(lay).get(part))
                for norm in rules.SHARES
            }
            parts.append((part, values))
            part_rows.append((f'{title} | {part}', values))
            part_layers.append(str(len(_by_part(seeds[0]).get(part, []))))
        if parts:
            profiles.append((title, parts))

    def gap(lay):
        by_part = _by_part(lay)
        heavy = [x for p in DET_BN_HEAVY for x in by_part.get(p, [])]
        light = [x for p in DET_BN_LIGHT for x in by_part.get(p, [])]
        return (rules.layer_share(heavy, 'BN') -
                rules.layer_share(light, 'BN'))

    det = collected.layers.get('det') or []
    seg = collected.layers.get(CLAIM1_TASK) or []
    result3 = rules.claim3(
        S(gap(lay) for lay in det),
        S(
            rules.layer_share(lay, 'IN') - rules.layer_share(lay, 'BN')
            for lay in seg),
        S(
            rules.layer_share(lay, 'LN') - rules.layer_share(lay, 'BN')
            for lay in seg), task_shares)

    images = {s.key: s.images for s in SETTINGS}
    metric_name = CLAIM1_METRIC[1]
    os.makedirs(out_dir, exist_ok=True)
    plots = dict(
        claim1=osp.join(out_dir, 'claim1_metric.png'),
        claim2=osp.join(out_dir, 'claim2_ratios.png'),
        claim3=osp.join(out_dir, 'claim3_profile.png'))
    rules.plot_metric(metric, images, metric_name, plots['claim1'])
    rules.plot_shares(shares, images, plots['claim2'])
    if profiles:
        rules.plot_profiles(profiles, plots['claim3'])

    columns = [(s.key, f'{s.images} images/GPU {s.title}') for s in SETTINGS]
    configs = MINI[CLAIM1_TASK].configs
    config_names = ', '.join(
        f'{norm}: `{osp.splitext(osp.basename(configs[key]))[0]}`'
        for norm, key in CLAIM1_NORMS.items())
    lines = [
        '# The SN paper\'s claims at small scale', '', header, '',
        'Verdict rule (fixed before any run, `ssn_norm/analysis/'
        'claims.py`): a comparison **holds** when its difference of means '
        f'over seeds is more than {rules.THRESHOLD:g} standard errors from '
        'zero in the claimed direction, is **contradicted** when it is '
        'that far in the other direction, and is **not shown** otherwise '
        f'or with fewer than {rules.MIN_SEEDS} seeds; a claim holds when '
        'all its comparisons hold, is contradicted when any is. Numbers: '
        'mean ± s (n seeds).', '',
        '## Claim 1: BN degrades as the images per GPU shrink; GN and SN '
        'hold', '',
        f'The {TASK_TITLES[CLAIM1_TASK]} minis ({config_names}), from '
        'scratch, on images that vary in contrast and illumination; 16 '
        'images per optimizer step in both settings, only the batch the '
        'statistics see changes. BN: moving averages at test; SN and SSN: '
        'batch-average statistics.', '',
        *rules.claim1_table(metric, columns, metric_name), '',
        *rules.tests_table(result1), '', '![claim 1](claim1_metric.png)', '',
        '## Claim 2: SN lowers its BN ratio and raises LN\'s at small '
        'batch', '', 'SN ratios at the end of the claim-1 SN runs, mean of '
        'the mean and variance ratios over all layers, then over seeds.', '',
        *rules.shares_table(
            [(f'{s.images} images/GPU {s.title}', shares[s.key])
             for s in SETTINGS]), '', *rules.tests_table(result2, 3), '',
        '![claim 2](claim2_ratios.png)', '',
        '## Claim 3: different tasks and parts choose different '
        'normalisers', '', 'SN ratio profile per task and part at the end '
        'of training (segmentation: the claim-1 SN runs at 2 images/GPU).', '',
        *rules.shares_table(part_rows, 'task | part', part_layers), '',
        *rules.tests_table(result3, 3), '', '![claim 3](claim3_profile.png)',
        ''
    ]
    # The parts table has a task column: widen its separator row.
    markdown = '\n'.join(lines).replace(
        '| task | part | layers | IN | LN | BN |\n|---|---|---|---|---|',
        '| task | part | layers | IN | LN | BN |\n|---|---|---|---|---|---|')
    with open(osp.join(out_dir, 'claims.md'), 'w', encoding='utf-8') as f:
        f.write(markdown)
    return markdown


#: The presets of this module (``tools/run_suite.py --preset``).
CLAIMS_PRESETS = tuple(PLANS)


def run_claims(preset: str = 'claims',
               root: str = '.',
               jobs: int = 2,
               seeds: Optional[int] = None) -> int:
    """Run the claims preset under ``root``; print and write ``claims.md``.

    Args:
        preset: ``'claims'`` or ``'claims-smoke'`` (:data:`PLANS`).
        root: where ``data/`` and ``work_dirs/`` live.
        jobs: runs trained at once.
        seeds: seeds per cell instead of the plan's.

    Returns the number of failed runs.
    """
    if preset not in PLANS:
        raise ValueError(f'unknown claims preset {preset!r}; choose from '
                         f'{", ".join(PLANS)}')
    plan = PLANS[preset]
    if seeds is not None:
        plan = Plan(**dict(plan.__dict__, seeds=seeds))
    root = osp.abspath(root)
    suite_dir = osp.join(root, 'work_dirs', f'suite-{preset}')
    os.makedirs(suite_dir, exist_ok=True)
    start = time.perf_counter()
    prepare_claims_data(plan, root)
    runs = claims_runs(plan, root)
    done, failed = execute_runs(runs, suite_dir, preset, root, jobs)
    cpu = sum(
        read_suite_result(osp.join(suite_dir, r.work_name)).get(
            'cpu_seconds', 0.) for r in done)
    header = (f'Preset `{preset}`: {len(runs)} runs ({len(done)} done, '
              f'{len(failed)} failed); {plan.steps} optimizer steps per '
              f'claim-1 run, {plan.seeds} seed(s) per cell, ratio logits at '
              f'{plan.ratio_lr_mult:g}× their learning rate. This '
              f'invocation took {time.perf_counter() - start:.0f} s; the '
              f'runs\' CPU time (user + system, runs done before included) '
              f'is {cpu:.0f} s.')
    markdown = analyse(collect(runs, suite_dir), suite_dir, header)
    print(markdown)
    print(f'[suite] claims written to {osp.join(suite_dir, "claims.md")}')
    return len(failed)
