"""Find mmengine runs in work directories and read their evaluations.

A run is a work directory (its basename is the config name) holding one
folder per launch, named by mmengine's timestamp ``YYYYMMDD_HHMMSS``:

* ``<run>/<timestamp>/<timestamp>.json`` — one JSON dict written by
  ``tools/test.py`` (test results);
* ``<run>/<timestamp>/run_info.json`` — written beside it by
  ``tools/test.py`` (:func:`ssn_norm.apis.write_run_info`): how the test
  ran, e.g. ``{"tta": true}`` for a multi-scale test (``--tta``).  A test
  result without it is a single-scale test;
* ``<run>/<timestamp>/vis_data/scalars.json`` — JSON lines written during
  training; validation entries (those holding a metric key) are mixed with
  training entries, whose ``time`` (seconds per iteration) and, on GPU,
  ``memory`` (MB, the peak allocated so far) give the run's cost
  (:class:`Cost`); a test result's ``time`` is the test loop's seconds per
  iteration.

Runs of one config that differ only in their seed live in
``<config>/seed-<k>`` or ``<config>_seed<k>`` (``tools/run_suite.py
--seeds N``): their :attr:`Run.name` is the config name and
:attr:`Run.seed` is ``k``, so the leaderboard aggregates them.

Anything missing, unreadable or without metric keys is reported with a
:class:`ResultWarning` and skipped: never an exception, never a zero.
A NaN or infinite metric of a chosen evaluation is warned about and kept
as NaN.
"""
import json
import math
import os
import os.path as osp
import re
import warnings
from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from .tasks import TASKS, Task, recognise_task

_TIMESTAMP = re.compile(r'^\d{8}_\d{6}$')
# A seed's work directory: ``seed-<k>`` inside the config's, or the config
# name with a ``_seed<k>`` suffix.
_SEED_DIR = re.compile(r'^seed-(\d+)$')
_SEED_SUFFIX = re.compile(r'^(.+)_seed(\d+)$')
#: The run-info file of a launch folder (see the module docstring).
RUN_INFO = 'run_info.json'
_METRIC_KEYS = frozenset(column.key for task in TASKS
                         for column in task.columns)


class ResultWarning(UserWarning):
    """A run, file or line that could not be used."""


def _warn(message: str) -> None:
    warnings.warn(message, ResultWarning, stacklevel=3)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run.

    Attributes:
        metrics: the raw mmengine metrics (numbers only), e.g.
            ``{'coco/bbox_mAP': 0.41}``.
        kind: ``'test'`` (``tools/test.py``) or ``'val'`` (during training).
        timestamp: the launch folder it came from.
        path: the file it was read from.
        step: the ``step`` of a validation entry (iteration, or epoch for
            epoch-based loops); None for tests.
        multi_scale: whether the run-info file says the test used
            test-time augmentation (``tools/test.py --tta``).
    """

    metrics: Dict[str, float]
    kind: str
    timestamp: str
    path: str
    step: Optional[int] = None
    multi_scale: bool = False

    def describe(self) -> str:
        """``test 20240101_120000``, ``test --tta 20240101_120000`` or
        ``val step 500 (20240101_120000)``."""
        if self.kind == 'test':
            tta = ' --tta' if self.multi_scale else ''
            return f'test{tta} {self.timestamp}'
        return f'val step {self.step} ({self.timestamp})'


@dataclass(frozen=True)
class Cost:
    """What a run cost, read from mmengine's logs; None where the logs do
    not say.

    Attributes:
        train_time: seconds per training iteration: the mean of the logged
            ``time`` windows of every launch, leaving out each launch's
            first window (it holds start-up: data workers, cuDNN
            autotuning) when the launch logged more than one.
        test_time: seconds per test iteration (mmengine's ``time`` of the
            latest test result); per image at the test loaders' batch size
            of one per GPU.
        memory: the peak of the logged ``memory`` (MB; mmengine logs it on
            GPU only).
    """

    train_time: Optional[float] = None
    test_time: Optional[float] = None
    memory: Optional[float] = None


def split_seed(path: str) -> Tuple[str, Optional[int]]:
    """The config name and seed of the work directory ``path``.

    ``work_dirs/cfg/seed-2`` and ``work_dirs/cfg_seed2`` give
    ``('cfg', 2)``; any other directory gives ``(basename, None)``.
    """
    path = osp.normpath(path)
    base = osp.basename(path)
    match = _SEED_DIR.match(base)
    if match is not None:
        return osp.basename(osp.dirname(path)), int(match.group(1))
    match = _SEED_SUFFIX.match(base)
    if match is not None:
        return match.group(1), int(match.group(2))
    return base, None


@dataclass
class Run:
    """A run and the evaluation chosen to represent it.

    A work directory tested both at a single scale and with ``--tta``
    stands for two runs, one of each (see :func:`load_runs`).

    Attributes:
        name: the work directory's basename (= the config name).
        path: the work directory.
        task: the task recognised from the chosen evaluation's metric keys.
        evaluation: the latest test result, or the latest validation entry
            when the run was never tested.
        num_evaluations: how many usable evaluations of its kind (single-
            or multi-scale) the run has in total.
        seed: the seed its work directory names (:func:`split_seed`), or
            None.
        cost: its training and test cost (:func:`read_cost`).
    """

    name: str
    path: str
    task: Task
    evaluation: Evaluation
    num_evaluations: int = 1
    evaluations: List[Evaluation] = field(default_factory=list, repr=False)
    seed: Optional[int] = None
    cost: Cost = field(default_factory=Cost)

    @property
    def multi_scale(self) -> bool:
        """Whether the chosen evaluation is a ``--tta`` test."""
        return self.evaluation.multi_scale

    def describe(self) -> str:
        """Which evaluation the numbers come from, e.g. ``test
        20240101_120000 (latest of 3)``, prefixed ``seed 2: `` for a seed's
        run."""
        text = self.evaluation.describe()
        if self.seed is not None:
            text = f'seed {self.seed}: {text}'
        if self.num_evaluations > 1:
            text += f' (latest of {self.num_evaluations})'
        return text


def _numbers(entry: dict) -> Dict[str, float]:
    return {
        k: float(v)
        for k, v in entry.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _has_metric(entry: dict) -> bool:
    return any(key in entry for key in _METRIC_KEYS)


def read_test_result(path: str, timestamp: str) -> Optional[Evaluation]:
    """The test result in ``path``, or None (with a warning) if unusable."""
    try:
        with open(path, encoding='utf-8') as f:
            entry = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        _warn(f'{path}: unreadable test result ({error}); skipped')
        return None
    if not isinstance(entry, dict):
        _warn(f'{path}: expected one JSON object, got '
              f'{type(entry).__name__}; skipped')
        return None
    if not _has_metric(entry):
        _warn(f'{path}: no known metric key (found '
              f'{", ".join(sorted(entry)) or "nothing"}); skipped')
        return None
    return Evaluation(_numbers(entry), 'test', timestamp, path)


def read_run_info(path: str) -> Optional[dict]:
    """The run-info file ``path`` (:data:`RUN_INFO`) as a dict whose
    ``tta`` is a bool, or None (with a warning) if unusable."""
    try:
        with open(path, encoding='utf-8') as f:
            info = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        _warn(f'{path}: unreadable run info ({error}); its test result is '
              'skipped (single- or multi-scale cannot be told)')
        return None
    if not isinstance(info, dict) or not isinstance(info.get('tta'), bool):
        _warn(f'{path}: run info must be a JSON object with "tta": true or '
              f'false, got {info!r}; its test result is skipped')
        return None
    return info


def json_objects(lines: Sequence[str], path: str) -> Iterator[dict]:
    """The JSON objects of mmengine's JSON-lines logs (``scalars.json``), in
    order.  Blank lines are skipped; a line that is no JSON object (e.g. one
    cut off when the run was killed) is warned about, naming ``path`` and
    its line number, and skipped."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            _warn(f'{path}:{number}: malformed line ({error}); skipped')
            continue
        if not isinstance(entry, dict):
            _warn(f'{path}:{number}: not a JSON object; skipped')
            continue
        yield entry


def read_val_results(path: str, timestamp: str) -> List[Evaluation]:
    """The validation entries of a ``scalars.json``, in file order.

    Lines that are not JSON objects (e.g. a line cut off when the run was
    killed) are warned about and skipped; the other lines still count.
    """
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as error:
        _warn(f'{path}: unreadable ({error}); skipped')
        return []
    results = []
    for entry in json_objects(lines, path):
        if _has_metric(entry):
            step = entry.get('step')
            results.append(
                Evaluation(
                    _numbers(entry), 'val', timestamp, path,
                    int(step) if isinstance(step, (int, float))
                    and math.isfinite(step) else None))
    return results


def _finite_number(value: object) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value):
        return float(value)
    return None


def read_train_costs(path: str) -> Tuple[List[float], List[float]]:
    """The ``time`` and ``memory`` values of the training entries of a
    ``scalars.json``, in file order.

    Training entries are the lines without a metric key that have ``lr``
    (mmengine logs the learning rate with every training window, never
    with a validation one, whose ``time`` includes the evaluator).
    Unreadable files and lines were warned about by
    :func:`read_val_results` and are skipped silently here.
    """
    times: List[float] = []
    memory: List[float] = []
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError):
        return times, memory
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(entry, dict) or _has_metric(entry) \
                or 'lr' not in entry:
            continue
        time_value = _finite_number(entry.get('time'))
        if time_value is not None:
            times.append(time_value)
        memory_value = _finite_number(entry.get('memory'))
        if memory_value is not None:
            memory.append(memory_value)
    return times, memory


def read_cost(path: str, evaluation: Optional[Evaluation] = None) -> Cost:
    """The :class:`Cost` of the run in ``path``.

    Args:
        path: the run's work directory.
        evaluation: its chosen evaluation; a test result's ``time`` is the
            test time (a validation entry's is not used: it mixes in the
            evaluator).

    Returns:
        The cost; a field is None when no launch logged it.
    """
    times: List[float] = []
    peaks: List[float] = []
    for timestamp in _timestamp_dirs(path):
        scalars = osp.join(path, timestamp, 'vis_data', 'scalars.json')
        if not osp.isfile(scalars):
            continue
        launch_times, launch_memory = read_train_costs(scalars)
        times += launch_times[1:] if len(launch_times) > 1 else launch_times
        peaks += launch_memory
    test_time = None
    if evaluation is not None and evaluation.kind == 'test':
        test_time = _finite_number(evaluation.metrics.get('time'))
    return Cost(
        sum(times) / len(times) if times else None, test_time,
        max(peaks) if peaks else None)


def _timestamp_dirs(path: str) -> List[str]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted(
        n for n in names
        if _TIMESTAMP.match(n) and osp.isdir(osp.join(path, n)))


def is_run_dir(path: str) -> bool:
    """Whether ``path`` holds at least one mmengine timestamp folder."""
    return bool(_timestamp_dirs(path))


def evaluations_of(path: str) -> List[Evaluation]:
    """Every usable evaluation of the run in ``path``, oldest first.

    Within a launch folder the validation entries come before its test
    result (``tools/test.py`` never writes validation entries, so a folder
    has one or the other in practice).
    """
    found = []
    for timestamp in _timestamp_dirs(path):
        folder = osp.join(path, timestamp)
        scalars = osp.join(folder, 'vis_data', 'scalars.json')
        if osp.isfile(scalars):
            found += read_val_results(scalars, timestamp)
        test = osp.join(folder, f'{timestamp}.json')
        if not osp.isfile(test):
            continue
        result = read_test_result(test, timestamp)
        info_path = osp.join(folder, RUN_INFO)
        if result is not None and osp.isfile(info_path):
            info = read_run_info(info_path)
            result = None if info is None else replace(
                result, multi_scale=info['tta'])
        if result is not None:
            found.append(result)
    return found


def choose(evaluations: List[Evaluation]) -> Optional[Evaluation]:
    """The latest test result; the latest validation entry if none."""
    tests = [e for e in evaluations if e.kind == 'test']
    pool = tests or evaluations
    return pool[-1] if pool else None


def _flag_non_finite(evaluation: Evaluation, run: str) -> Evaluation:
    """``evaluation`` with every NaN or infinite metric warned about
    (naming the run and the metric) and set to NaN, so a table shows
    ``nan`` for it, never a number such as ``inf``."""
    bad = {
        key: value
        for key, value in evaluation.metrics.items()
        if key in _METRIC_KEYS and not math.isfinite(value)
    }
    for key, value in sorted(bad.items()):
        _warn(f'{run}: {evaluation.describe()}: {key} is {value}, not a '
              'finite number (a diverged run?); shown as nan')
    if not bad:
        return evaluation
    metrics = dict(evaluation.metrics)
    metrics.update(dict.fromkeys(bad, math.nan))
    return replace(evaluation, metrics=metrics)


def load_runs(path: str) -> List[Run]:
    """The runs in ``path``: one for its single-scale evaluations and one
    for its ``--tta`` tests, each with its chosen evaluation (single-scale
    first).  Empty (warned) when it has no usable evaluation; a kind whose
    metrics name no known task is warned about and left out."""
    path = osp.normpath(path)
    name, seed = split_seed(path)
    evaluations = evaluations_of(path)
    if not evaluations:
        _warn(f'{path}: no usable evaluation (a test result '
              '<timestamp>/<timestamp>.json or validation entries in '
              '<timestamp>/vis_data/scalars.json); skipped')
        return []
    runs = []
    for multi_scale in (False, True):
        group = [e for e in evaluations if e.multi_scale == multi_scale]
        chosen = choose(group)
        if chosen is None:
            continue
        chosen = _flag_non_finite(chosen, path)
        task = recognise_task(chosen.metrics)
        if task is None:
            _warn(f'{chosen.path}: metrics {sorted(chosen.metrics)} match '
                  'no task (detection, segmentation, video); skipped')
            continue
        runs.append(
            Run(name, path, task, chosen, len(group), group, seed,
                read_cost(path, chosen)))
    return runs


def load_run(path: str) -> Optional[Run]:
    """The first of :func:`load_runs` (the single-scale run if there is
    one), or None (warned)."""
    runs = load_runs(path)
    return runs[0] if runs else None


def find_run_dirs(paths: Iterable[str]) -> List[str]:
    """Run directories at or below each of ``paths``, sorted, no duplicates.

    A path that does not exist, or under which no run is found, is warned
    about.  The search does not descend into a run directory.
    """
    found = []
    for root in paths:
        if not osp.isdir(root):
            _warn(f'{root}: no such directory; skipped')
            continue
        before = len(found)
        for current, dirs, _ in os.walk(root):
            if is_run_dir(current):
                found.append(osp.normpath(current))
                dirs[:] = []
            else:
                dirs.sort()
        if len(found) == before:
            _warn(f'{root}: no mmengine run (a folder with '
                  'YYYYMMDD_HHMMSS sub-folders) found; skipped')
    return sorted(set(found))


def find_runs(paths: Iterable[str]) -> List[Run]:
    """Every usable run at or below ``paths`` (see :func:`find_run_dirs`).

    Runs with the same name in different places are all kept; the caller
    shows their paths.  A directory tested both ways gives two runs
    (:func:`load_runs`).
    """
    runs = []
    for run_dir in find_run_dirs(paths):
        runs += load_runs(run_dir)
    return runs
