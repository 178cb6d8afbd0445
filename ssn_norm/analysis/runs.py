"""Find mmengine runs in work directories and read their evaluations.

A run is a work directory (its basename is the config name) holding one
folder per launch, named by mmengine's timestamp ``YYYYMMDD_HHMMSS``:

* ``<run>/<timestamp>/<timestamp>.json`` — one JSON dict written by
  ``tools/test.py`` (test results);
* ``<run>/<timestamp>/vis_data/scalars.json`` — JSON lines written during
  training; validation entries (those holding a metric key) are mixed with
  training entries.

Anything missing, unreadable or without metric keys is reported with a
:class:`ResultWarning` and skipped: never an exception, never a zero.
"""
import json
import math
import os
import os.path as osp
import re
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

from .tasks import TASKS, Task, recognise_task

_TIMESTAMP = re.compile(r'^\d{8}_\d{6}$')
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
    """

    metrics: Dict[str, float]
    kind: str
    timestamp: str
    path: str
    step: Optional[int] = None

    def describe(self) -> str:
        """``test 20240101_120000`` or ``val step 500 (20240101_120000)``.
        """
        if self.kind == 'test':
            return f'test {self.timestamp}'
        return f'val step {self.step} ({self.timestamp})'


@dataclass
class Run:
    """A run and the evaluation chosen to represent it.

    Attributes:
        name: the work directory's basename (= the config name).
        path: the work directory.
        task: the task recognised from the chosen evaluation's metric keys.
        evaluation: the latest test result, or the latest validation entry
            when the run was never tested.
        num_evaluations: how many usable evaluations the run has in total.
    """

    name: str
    path: str
    task: Task
    evaluation: Evaluation
    num_evaluations: int = 1
    evaluations: List[Evaluation] = field(default_factory=list, repr=False)

    def describe(self) -> str:
        """Which evaluation the numbers come from, e.g. ``test
        20240101_120000 (latest of 3)``."""
        text = self.evaluation.describe()
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
        if _has_metric(entry):
            step = entry.get('step')
            results.append(
                Evaluation(
                    _numbers(entry), 'val', timestamp, path,
                    int(step) if isinstance(step, (int, float))
                    and math.isfinite(step) else None))
    return results


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
        if osp.isfile(test):
            result = read_test_result(test, timestamp)
            if result is not None:
                found.append(result)
    return found


def choose(evaluations: List[Evaluation]) -> Optional[Evaluation]:
    """The latest test result; the latest validation entry if none."""
    tests = [e for e in evaluations if e.kind == 'test']
    pool = tests or evaluations
    return pool[-1] if pool else None


def load_run(path: str) -> Optional[Run]:
    """The run in ``path`` with its chosen evaluation; None (warned) when it
    has no usable evaluation or its metrics name no known task."""
    path = osp.normpath(path)
    evaluations = evaluations_of(path)
    chosen = choose(evaluations)
    if chosen is None:
        _warn(f'{path}: no usable evaluation (a test result '
              '<timestamp>/<timestamp>.json or validation entries in '
              '<timestamp>/vis_data/scalars.json); skipped')
        return None
    task = recognise_task(chosen.metrics)
    if task is None:
        _warn(f'{chosen.path}: metrics {sorted(chosen.metrics)} match no '
              'task (detection, segmentation, video); skipped')
        return None
    return Run(
        osp.basename(path), path, task, chosen, len(evaluations), evaluations)


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
    shows their paths.
    """
    runs = []
    for run_dir in find_run_dirs(paths):
        run = load_run(run_dir)
        if run is not None:
            runs.append(run)
    return runs
