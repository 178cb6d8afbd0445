"""Leaderboard tables in the papers' layouts, beside the papers' numbers.

Runs are grouped by task and by suite: full-size runs have one row per
config, with the paper's number for the same setting (the config's own
``Paper`` row) beside ours and the difference; mini-suite runs (a ``mini``
or ``tiny`` token in the config name) have one row per normaliser.  A
paper number stands only beside a row of its own setting: the full-size
parent a mini config names in its ``Paper Reference`` (and the paper row
of a ``--tta`` test's single-scale setting) is named on one line under the
table, never in it.

Each task and suite has a main table (at most :data:`MAX_MAIN_COLUMNS`
columns: the label, the setting, the papers' headline metrics of
:data:`MAIN_METRICS` with paper and Δ, the comparison with the baseline)
and a details table (every other metric, the cost, the reference, the
evaluation); the notes come once, after all tables.

The paper column shows every number of the paper's row (a column with no
run number shows ``—`` for ours).  Where the paper evaluated on another
split (``Split`` in the metafile, e.g. Cityscapes test for Table VII) its
numbers carry the split, e.g. ``69.7 (test)``, and no difference is
computed.  A ``Reference`` (another publication's run of the setting, such
as the released re-implementation) is shown in a column of its own,
labelled as not the paper, and never compared.

For segmentation, a multi-scale test run (``tools/test.py --tta``, known
from the run-info file it writes; or an old ``..._ms-flip-test`` config
name, see :data:`~ssn_norm.analysis.tasks.MULTI_SCALE`) shares the row of
its single-scale config and fills the ``mIoU(ms)`` column.  Detection and
video ``--tta`` runs get a row of their own, as the papers have no such
column: the paper's numbers are shown there as a different setting.

The evaluation column says, for SN models, which statistics each number
used (:func:`statistics_text`): the batch averages the SN paper tests with,
or the moving averages.

Runs of one config that differ only in their seed (work directories
``<config>/seed-<k>`` or ``<config>_seed<k>``, as ``tools/run_suite.py
--seeds N`` writes them) share a row: each metric shows the mean over the
seeds ± the sample standard deviation and the number of seeds that
reported it, and the difference to the paper carries that spread.

Cost columns show what mmengine logged (:class:`~ssn_norm.analysis.runs.
Cost`): training seconds per iteration, inference milliseconds per image
and peak GPU memory, each the mean over the row's seeds.  A row's
*baseline* is the row of its table with the same config apart from the
normalisers (e.g. ``mask-rcnn_r50-sn_fpn_sn-head_2x_coco`` and
``mask-rcnn_r50_fpn_2x_coco``) whose normaliser comes first in
:data:`BASELINE_NORMS` (BN†, BN, SyncBN, GN; never a switchable one);
the ``vs baseline`` column reads e.g. ``+0.8 box AP, +12% train time``.
"""
import csv
import io
import json
import math
import os
import os.path as osp
import re
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..batch_stats import STATISTICS_KEY
from .paper import ModelEntry, PaperRow, load_model_entries
from .runs import Run, find_runs
from .tasks import (DETECTION, NORM_NAME_TOKENS, NORM_ORDER, SEGMENTATION,
                    TASKS, VIDEO, Task, is_mini, is_multi_scale,
                    normalizers_in_name, scaled_metrics, single_scale_name)

#: Output formats of :func:`write_leaderboard`, by file extension.
LEADERBOARD_FORMATS = ('.md', '.csv', '.json')
Paths = Sequence[str]
#: Appended to the label of a detection / video ``--tta`` run's own row.
TTA_LABEL = ' (--tta)'
#: Normalisers a row's cost is compared with, in order of preference: the
#: papers' baselines, never a switchable one.
BASELINE_NORMS = ('BN†', 'BN', 'SyncBN', 'GN')
#: Cost columns: name, :class:`~ssn_norm.analysis.runs.Cost` field, factor
#: from the logged unit (seconds, MB) to the shown one.
COST_COLUMNS = (
    ('train s/iter', 'train_time', 1.),
    ('infer ms/img', 'test_time', 1000.),
    ('memory GB', 'memory', 1. / 1024),
)
#: The metric columns of each task's main table, the ones the papers'
#: tables lead with; every other metric, the cost, the reference and the
#: evaluation go to the task's details table.
MAIN_METRICS = {
    DETECTION.name: ('box AP', 'mask AP'),
    SEGMENTATION.name: ('mIoU', 'mIoU(ms)'),
    VIDEO.name: ('Top 1 Accuracy', 'Top 5 Accuracy'),
}
#: The most columns a main table has (label, setting, two metrics with
#: paper and Δ each, vs baseline: 9).
MAX_MAIN_COLUMNS = 10
# How the ``vs baseline`` column names each cost column.
_COST_WORDS = {
    'train s/iter': 'train time',
    'infer ms/img': 'inference time',
    'memory GB': 'memory',
}


@dataclass
class Row:
    """One table row.

    Attributes:
        label: the config name (full-size) or the normaliser (mini suite).
        runs: the runs it shows (two for a segmentation config tested at
            single and multiple scales).
        setting: the paper's setting, else the normalisers the name states.
        values: our numbers in percent, by metric column name; None where
            the evaluator reported "not applicable" (COCO's -1).
        paper: the paper row shown beside ours, if any.
        paper_config: the config whose metafile entry holds :attr:`paper`.
        same_setting: whether :attr:`paper` is this config's own row (then
            :attr:`deltas` are computed unless the paper's split differs)
            or a full-size parent's / a ``--tta`` row's.
        normalization: the metafile's ``Metadata: Normalization``.
        reference: the config's labelled non-paper numbers, if any.
        samples: every seed's number of each metric (one entry per run
            that reported it); :attr:`values` holds their mean.
        spread: the sample standard deviation of each metric with two or
            more samples.
        cost: the mean cost over the row's runs, by
            :data:`COST_COLUMNS` name.
        baseline: the row this one's cost and headline metric are compared
            with (itself for the baseline row); None when the table has no
            other normaliser of the same config.
    """

    label: str
    runs: List[Run]
    setting: Optional[str] = None
    values: Dict[str, Optional[float]] = field(default_factory=dict)
    paper: Optional[PaperRow] = None
    paper_config: Optional[str] = None
    same_setting: bool = False
    normalization: Optional[str] = None
    reference: Optional[PaperRow] = None
    samples: Dict[str, List[Optional[float]]] = field(default_factory=dict)
    spread: Dict[str, float] = field(default_factory=dict)
    cost: Dict[str, float] = field(default_factory=dict)
    baseline: Optional['Row'] = field(default=None, repr=False, compare=False)

    @property
    def seeds(self) -> List[int]:
        """The seeds of the row's runs, sorted, without repeats."""
        return sorted({r.seed for r in self.runs if r.seed is not None})

    def count(self, name: str) -> int:
        """How many runs reported metric ``name``."""
        return len(self.samples.get(name, ()))

    def add(self, run: Run, values: Dict[str, Optional[float]]) -> None:
        """Add ``run`` and its scaled ``values``; :attr:`values` and
        :attr:`spread` become the mean and sample standard deviation of
        each metric over the runs that reported it (a "not applicable"
        None counts only when every run says so)."""
        self.runs.append(run)
        for name, value in values.items():
            self.samples.setdefault(name, []).append(value)
            numbers = [v for v in self.samples[name] if v is not None]
            if not numbers:
                self.values[name] = None
                continue
            self.values[name] = math.fsum(numbers) / len(numbers)
            if len(numbers) > 1:
                self.spread[name] = statistics.stdev(numbers)

    def accepts(self, run: Run, values: Dict[str, object]) -> bool:
        """Whether ``run`` belongs in this row: it fills metrics the row
        lacks (a multi-scale test beside a single-scale one), or it is
        another seed of seeded runs for every metric it shares."""
        shared = set(values) & set(self.values)
        if not shared:
            return True
        if run.seed is None or run.seed in {
                r.seed
                for r in self.runs if shared & set(self._metric_names(r))
        }:
            return False
        return all(r.seed is not None for r in self.runs)

    def _metric_names(self, run: Run) -> List[str]:
        multi = run.task is SEGMENTATION and _multi_scale(run)
        return list(scaled_metrics(run.task, run.evaluation.metrics, multi))

    def compute_cost(self) -> None:
        """Fill :attr:`cost`: the mean of each logged cost over the row's
        work directories (a directory tested both ways counts once; the
        inference time comes from single-scale tests only, as a
        multi-scale test runs the model several times per image)."""
        by_path: Dict[str, Run] = {}
        for run in self.runs:
            if not _multi_scale(run) or run.path not in by_path:
                by_path[run.path] = run
        for name, attribute, scale in COST_COLUMNS:
            numbers = [
                getattr(run.cost, attribute) for run in by_path.values()
                if getattr(run.cost, attribute) is not None
                and not (attribute == 'test_time' and _multi_scale(run)
                         and run.task is SEGMENTATION)
            ]
            if numbers:
                self.cost[name] = math.fsum(numbers) / len(numbers) * scale

    def versus_baseline(self, headline: str) -> Optional[str]:
        """``+0.8 box AP, +12% train time, -3% inference time`` against
        :attr:`baseline`; ``baseline`` for the baseline row itself; None
        when there is no baseline."""
        if self.baseline is None:
            return None
        if self.baseline is self:
            return 'baseline'
        parts = []
        ours = self.values.get(headline)
        theirs = self.baseline.values.get(headline)
        if ours is not None and theirs is not None:
            parts.append(f'{_fmt_delta(ours, theirs)} {headline}')
        for name, what in _COST_WORDS.items():
            ours, theirs = self.cost.get(name), self.baseline.cost.get(name)
            if ours is not None and theirs:
                parts.append(f'{100 * (ours / theirs - 1):+.0f}% {what}')
        label = self.baseline.setting or self.baseline.label
        return f'{", ".join(parts)} vs {label}' if parts else None

    @property
    def deltas(self) -> Dict[str, float]:
        """Ours minus the paper's, for metrics both have; only when the
        paper row is for the same setting and split."""
        if self.paper is None or not self.same_setting or self.paper.split:
            return {}
        return {
            name: value - self.paper.metrics[name]
            for name, value in self.values.items()
            if name in self.paper.metrics and value is not None
        }

    def evaluation_text(self) -> str:
        """Which evaluation each number comes from, and for SN models
        which statistics it used (:func:`statistics_text`)."""
        if len(self.runs) == 1:
            return _describe(self.runs[0])
        kinds = {_multi_scale(run) for run in self.runs}
        return '; '.join((('ms: ' if _multi_scale(run) else 'ss: '
                           ) if len(kinds) > 1 else '') + _describe(run)
                         for run in self.runs)


@dataclass
class Table:
    """The rows of one task and suite (``'full'`` or ``'mini'``)."""

    task: Task
    suite: str
    rows: List[Row]

    @property
    def metric_names(self) -> List[str]:
        """The task's columns that at least one row, or the paper row of
        its own setting shown beside it, has a number for."""
        return [
            c.name for c in self.task.columns if any(
                c.name in row.values or c.name in _own_paper(row)
                for row in self.rows)
        ]

    @property
    def paper_names(self) -> List[str]:
        """Metric columns for which at least one row shows a paper number:
        only beside a row of the paper's own setting."""
        return [
            name for name in self.metric_names if any(
                name in _own_paper(row) for row in self.rows)
        ]

    @property
    def cost_names(self) -> List[str]:
        """Cost columns that at least one row has a number for."""
        return [
            name for name, _, _ in COST_COLUMNS
            if any(name in row.cost for row in self.rows)
        ]

    @property
    def delta_names(self) -> List[str]:
        return [
            name for name in self.metric_names
            if any(name in row.deltas for row in self.rows)
        ]

    @property
    def title(self) -> str:
        suffix = ' — mini suite' if self.suite == 'mini' else ''
        return self.task.title + suffix


@dataclass
class Leaderboard:
    """Every table, plus the warnings raised while gathering."""

    tables: List[Table]
    warnings: List[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        return render_markdown(self)

    def to_csv(self) -> str:
        return render_csv(self)

    def to_json(self) -> str:
        return render_json(self)


def statistics_text(run: Run) -> Optional[str]:
    """Which BN statistics the SN layers used in the run's evaluation, as
    :class:`~ssn_norm.hooks.BatchStatsHook` logged them beside its metrics
    (:data:`~ssn_norm.batch_stats.STATISTICS_KEY`):
    ``'batch-average statistics (N samples)'`` (the SN paper's test
    setting), ``'moving-average statistics'``, or None when the run logged
    none (no SN layer with BN statistics, or no hook)."""
    samples = run.evaluation.metrics.get(STATISTICS_KEY)
    if samples is None or math.isnan(samples):
        return None
    if samples > 0:
        return f'batch-average statistics ({samples:.0f} samples)'
    return 'moving-average statistics'


def _describe(run: Run) -> str:
    statistics = statistics_text(run)
    return run.describe() + (f', {statistics}' if statistics else '')


def _own_paper(row: Row) -> Dict[str, float]:
    """The paper's numbers shown beside ``row``: its own setting's only."""
    return row.paper.metrics if row.paper and row.same_setting else {}


def _multi_scale(run: Run) -> bool:
    """A ``--tta`` test, or a run of an old name-marked multi-scale
    segmentation config (only there: detection names such as
    ``..._ms-3x_coco`` mark multi-scale *training*)."""
    return run.multi_scale or (run.task is SEGMENTATION
                               and is_multi_scale(run.name))


def _config_name(run: Run) -> str:
    """The config the run evaluates (an old multi-scale wrapper's parent).
    """
    if run.task is SEGMENTATION:
        return single_scale_name(run.name)
    return run.name


def _row_key(run: Run) -> str:
    if run.task is not SEGMENTATION and _multi_scale(run):
        return run.name + TTA_LABEL
    return _config_name(run)


def _attach_paper(row: Row, entries: Dict[str, ModelEntry]) -> None:
    names = [_config_name(row.runs[0])] + [run.name for run in row.runs]
    own: Optional[PaperRow] = None
    reference: Optional[str] = None
    for name in dict.fromkeys(names):
        entry = entries.get(name)
        if entry is None:
            continue
        row.normalization = row.normalization or entry.normalization
        row.reference = row.reference or entry.reference
        if entry.paper is not None:
            if own is None:
                own, row.paper_config = entry.paper, name
            else:  # e.g. separate ss and ms entries: one row, both numbers
                merged = dict(entry.paper.metrics)
                merged.update(own.metrics)
                own = PaperRow(own.title, own.table, own.setting, merged,
                               own.split, own.url)
        elif entry.paper_reference and reference is None:
            reference = entry.paper_reference
    tta_row = row.runs[0].task is not SEGMENTATION and any(
        _multi_scale(run) for run in row.runs)
    if own is not None:
        # A detection/video --tta test is not the paper's setting.
        row.paper, row.same_setting = own, not tta_row
    elif reference is not None and entries[reference].paper is not None:
        row.paper = entries[reference].paper
        row.paper_config, row.same_setting = reference, False


def _setting(row: Row) -> Optional[str]:
    """The setting of the row's own paper row; else the metafile's
    ``Normalization``; else what the config name states; else (a baseline
    named without a normaliser, e.g. ``mask-rcnn_r18_fpn_mini_tiny-coco``)
    the referenced parent's."""
    if row.paper is not None and row.same_setting and row.paper.setting:
        return row.paper.setting
    named = row.normalization or normalizers_in_name(_config_name(row.runs[0]))
    if named is None and row.paper is not None and row.paper.setting:
        return row.paper.setting
    return named


def _norm_rank(label: str) -> tuple:
    head = label.split('+')[0]
    rank = NORM_ORDER.index(head) if head in NORM_ORDER else len(NORM_ORDER)
    return (rank, label)


def _leading_norm(setting: Optional[str]) -> str:
    """The first normaliser of a setting: ``'BN†/–'`` → ``'BN†'``,
    ``'SN(8,32)'`` → ``'SN'``, ``'GN‡/GN'`` → ``'GN'``; ``''`` for a
    compound such as ``'GN-WS+GN-WS'`` (GN with weight standardisation is
    not GN)."""
    match = re.match(r'[A-Za-z]+†?(?=$|[+/(,‡ ])', setting or '')
    return match.group(0) if match else ''


def _skeleton(label: str) -> str:
    """A row key without its normalisers: the tokens of the name minus the
    normaliser tokens, a ``head`` or ``ws`` token and an ``(8,k)`` variant
    token (``sn-8x32``) after a normaliser."""
    tokens = re.split(r'[_\-.]', label.lower())
    kept = []
    after_norm = False
    for token in tokens:
        if token in NORM_NAME_TOKENS or token in ('head', 'ws'):
            after_norm = token != 'head'
            continue
        if after_norm and re.fullmatch(r'\d+x\d+', token):
            after_norm = False
            continue
        after_norm = False
        kept.append(token)
    return '_'.join(kept)


def _attach_baselines(rows: List[Row]) -> None:
    """Set each row's :attr:`Row.baseline` (see the module docstring)."""
    groups: Dict[str, List[Row]] = {}
    for row in rows:
        key = row.runs[0].name + (
            TTA_LABEL if row.label.endswith(TTA_LABEL) else '')
        groups.setdefault(_skeleton(key), []).append(row)
    for group in groups.values():
        candidates = [
            row for row in group
            if _leading_norm(row.setting) in BASELINE_NORMS
        ]
        if not candidates or len(group) < 2:
            continue

        def rank(row: Row) -> tuple:
            # The papers' baseline first; among equals the config naming
            # the fewest normalisers (BN†/– before BN†/GN).
            named = normalizers_in_name(row.runs[0].name)
            return (BASELINE_NORMS.index(_leading_norm(row.setting)),
                    len(named.split('+')) if named else 0, row.label)

        baseline = min(candidates, key=rank)
        for row in group:
            row.baseline = baseline


def build_leaderboard(runs: Iterable[Run],
                      entries: Dict[str, ModelEntry]) -> Leaderboard:
    """Tables for ``runs`` with paper numbers from ``entries``.

    See the module docstring for the layout.  Nothing is dropped: a run
    whose numbers cannot share a row gets a row of its own.
    """
    runs = list(runs)
    tables = []
    for task in TASKS:
        for suite in ('full', 'mini'):
            chosen = [
                r for r in runs
                if r.task is task and is_mini(r.name) == (suite == 'mini')
            ]
            if not chosen:
                continue
            rows: List[Row] = []
            open_rows: Dict[str, Row] = {}
            for run in sorted(chosen, key=lambda r: (r.name, r.path)):
                multi = task is SEGMENTATION and _multi_scale(run)
                values = scaled_metrics(task, run.evaluation.metrics, multi)
                key = _row_key(run)
                row = open_rows.get(key)
                if row is None or not row.accepts(run, values):
                    row = Row(key, [])
                    rows.append(row)
                    open_rows[key] = row
                row.add(run, values)
            for row in rows:
                _attach_paper(row, entries)
                row.setting = _setting(row)
                row.compute_cost()
                if suite == 'mini':
                    tta = TTA_LABEL if row.label.endswith(TTA_LABEL) else ''
                    row.label = (row.setting or row.label) + tta
                elif len(row.runs) == 1 and task is SEGMENTATION:
                    row.label = row.runs[0].name  # e.g. a lone ms test
            _attach_baselines(rows)
            if suite == 'mini':
                rows.sort(key=lambda r: _norm_rank(r.label))
            tables.append(Table(task, suite, rows))
    return Leaderboard(tables)


def gather(work_dirs: Paths, metafiles: Paths = ()) -> Leaderboard:
    """Find the runs under ``work_dirs`` and tabulate them.

    Args:
        work_dirs: run directories or folders holding them.
        metafiles: ``model-index.yml`` files and/or ``metafile.yml`` files
            with the paper numbers.

    Returns:
        The leaderboard; every :class:`~ssn_norm.analysis.runs.ResultWarning`
        raised on the way is re-issued and also kept in its ``warnings``.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        entries = load_model_entries(metafiles)
        board = build_leaderboard(find_runs(work_dirs), entries)
    for item in caught:
        board.warnings.append(str(item.message))
        warnings.warn(item.message, item.category, stacklevel=2)
    return board


# ----------------------------------------------------------------- rendering
def _fmt(value: Optional[float], missing: str = '—') -> str:
    if value is None:
        return missing
    if math.isnan(value):
        return 'nan'
    if value != 0 and abs(value) < 0.05:
        return f'{value:.2g}'  # do not let a small number read as zero
    return f'{value:.1f}'


def _fmt_delta(ours: float, paper: float) -> str:
    # The difference of the shown (1-decimal) numbers, so the row adds up.
    if math.isnan(ours):
        return 'nan'
    delta = round(ours, 1) - round(paper, 1)
    return f'{delta:+.1f}'


def _fmt_spread(row: Row, name: str) -> str:
    """`` ± 0.3 (n=3)`` for a metric with several seeds, else ``''``."""
    if name not in row.spread:
        return ''
    return f' ± {row.spread[name]:.1f} (n={row.count(name)})'


def _fmt_cost(name: str, value: Optional[float]) -> str:
    if value is None:
        return '—'
    if name == 'train s/iter':
        return f'{value:.3f}'
    if name == 'memory GB':
        return f'{value:.2f}'
    return f'{value:.1f}'


def _md_table(header: List[str], lines: List[List[str]]) -> List[str]:
    out = ['| ' + ' | '.join(header) + ' |']
    out.append('|' + '|'.join(['---'] * len(header)) + '|')
    out += ['| ' + ' | '.join(cells) + ' |' for cells in lines]
    return out


def _metric_header(table: Table, names: Sequence[str]) -> List[str]:
    papers, deltas = set(table.paper_names), set(table.delta_names)
    header = []
    for name in names:
        header.append(name)
        header += ['paper'] if name in papers else []
        header += ['Δ'] if name in deltas else []
    return header


def _metric_cells(table: Table, row: Row, names: Sequence[str]) -> List[str]:
    """Ours, and where the table has them the paper's number of the row's
    own setting and the difference, for each of ``names``."""
    papers, deltas = set(table.paper_names), set(table.delta_names)
    paper = _own_paper(row)
    cells = []
    for name in names:
        ours = row.values.get(name)
        cells.append(
            _fmt(ours, 'n/a' if name in row.values else '—') +
            _fmt_spread(row, name))
        if name in papers:
            text = _fmt(paper.get(name))
            if name in paper and row.paper.split:
                text += f' ({row.paper.split})'
            cells.append(text)
        if name in deltas and name in row.deltas:
            spread = row.spread.get(name)
            cells.append(
                _fmt_delta(ours, paper[name]) +
                ('' if spread is None else f' ± {spread:.1f}'))
        elif name in deltas:
            cells.append('—')
    return cells


def _render_table(table: Table) -> List[str]:
    """The main table (label, setting, the task's :data:`MAIN_METRICS`
    with the paper's numbers and Δ, vs baseline), then the details table
    (every other metric, cost, reference, evaluation), then one line
    naming the paper rows of a different setting the rows point to."""
    metrics = table.metric_names
    main = [n for n in metrics if n in MAIN_METRICS[table.task.name]]
    rest = [n for n in metrics if n not in main]
    mini = table.suite == 'mini'
    references = not mini and any(row.reference for row in table.rows)
    costs = table.cost_names
    headline = table.task.columns[0].name
    versus = any(row.baseline is not None for row in table.rows)
    label = 'Norm' if mini else 'Config'
    header = [label] + ([] if mini else ['Setting'])
    header += _metric_header(table, main)
    header += ['vs baseline'] if versus else []
    details = [label] + _metric_header(table, rest)
    details += (['Config'] if mini else []) + costs
    details += (['Reference (not the paper)'] if references else [])
    details.append('Evaluation')
    lines, detail_lines = [], []
    for row in table.rows:
        cells = [row.label]
        if not mini:
            setting = row.setting or '—'
            if row.paper is not None and row.same_setting and \
                    row.paper.table:
                split = (f', {row.paper.split} split'
                         if row.paper.split else '')
                setting += f' (Table {row.paper.table}{split})'
            cells.append(setting)
        cells += _metric_cells(table, row, main)
        if versus:
            cells.append(row.versus_baseline(headline) or '—')
        lines.append(cells)
        more = [row.label] + _metric_cells(table, row, rest)
        if mini:
            more.append(', '.join(run.name for run in row.runs))
        more += [_fmt_cost(name, row.cost.get(name)) for name in costs]
        if references:
            more.append(_reference_text(row.reference))
        more.append(row.evaluation_text())
        detail_lines.append(more)
    out = _md_table(header, lines) + ['', 'Details:', '']
    out += _md_table(details, detail_lines)
    pointers = _paper_pointers(table)
    return out + (['', pointers] if pointers else [])


def _paper_pointers(table: Table) -> str:
    """One line: the paper rows of another setting that rows refer to (a
    mini config's full-size parent, the single-scale row of a ``--tta``
    test), with their numbers, shown nowhere beside ours."""
    cited = {}
    for row in table.rows:
        if row.paper is None or row.same_setting:
            continue
        numbers = ', '.join(f'{name} {_fmt(value)}'
                            for name, value in row.paper.metrics.items())
        cited.setdefault(f'{row.paper.cite()} ({row.paper_config}): {numbers}',
                         []).append(row.label)
    if not cited:
        return ''
    return ('Paper, a different setting (not comparable, no difference '
            'computed): ' + '; '.join(f'{", ".join(labels)} → {text}'
                                      for text, labels in cited.items()) + '.')


def _reference_text(reference: Optional[PaperRow]) -> str:
    """``box AP 39.1 (Faster R-CNN R-50-FPN SN(8,2) 2x)``, or ``—``."""
    if reference is None:
        return '—'
    numbers = ', '.join(f'{name} {_fmt(value)}'
                        for name, value in reference.metrics.items())
    return f'{numbers} ({reference.setting})' if reference.setting \
        else numbers


def _notes(table: Table) -> List[str]:
    """The notes ``table`` needs, each a paragraph; a note two tables need
    is the same text (see :func:`render_markdown`)."""
    notes = []
    if table.delta_names:
        notes.append('Δ = ours − paper, same setting and split, percent '
                     'points.')
    if any(row.spread for row in table.rows):
        notes.append('mean ± s (n=k): the mean over k seeds of one config '
                     'and their sample standard deviation; Δ is that mean '
                     '− the paper, ± the same s.')
    elif table.suite == 'mini':
        notes.append('Mini tables: one seed per row, so a difference '
                     'between rows may be seed-to-seed noise '
                     '(`tools/run_suite.py --seeds N` runs each config N '
                     'times and shows mean ± s); tiny data trained from '
                     'scratch, not the papers\' setting, so no paper number '
                     'stands beside them.')
    if table.cost_names:
        notes.append('Cost from the mmengine logs, mean over the row\'s '
                     'seeds: train s/iter = training seconds per iteration; '
                     'infer ms/img = the test loop\'s time per iteration '
                     '(one image per GPU); memory GB = peak GPU memory while '
                     'training (logged on GPU only). vs baseline: the row '
                     'with the same config and the first of BN†, BN, '
                     'SyncBN, GN as its normaliser; the difference of the '
                     'first metric and the relative cost.')
    splits = sorted({
        row.paper.split
        for row in table.rows
        if row.paper and row.same_setting and row.paper.split
    })
    for split in splits:
        notes.append(f'({split}): the paper\'s number is on that split, '
                     'ours on the split the config evaluates; no '
                     'difference is computed.')
    if any(None in row.values.values() for row in table.rows):
        notes.append('n/a: COCO reports -1 when the evaluation split has no '
                     'object of that size.')
    if any(statistics_text(run) for row in table.rows for run in row.runs):
        notes.append('Evaluation: which BN statistics the SN layers used, '
                     'as BatchStatsHook logged them: batch-average (the SN '
                     'paper\'s test setting: the average over N training '
                     'samples once training ended) or moving-average.')
    if 'mIoU(ms)' in table.metric_names:
        notes.append('mIoU(ms): from a multi-scale test of the same config '
                     '(`tools/test.py --tta`, or an old `_ms-flip-test` '
                     'config); the paper\'s text does not say whether its '
                     'multi-scale test flipped.')
    return notes


def render_markdown(board: Leaderboard) -> str:
    """Markdown: one section per task and suite (main table, details
    table, a line naming the paper rows of another setting), then every
    note once: the sources of the paper and reference numbers and the
    footnotes any table needs."""
    if not board.tables:
        return 'No runs with results found.\n'
    out = []
    notes: List[str] = []
    for table in board.tables:
        out += [f'## {table.title}', '']
        out += _render_table(table)
        out.append('')
        notes += _notes(table)
    titles = sorted({
        row.paper.title
        for table in board.tables
        for row in table.rows if row.paper and row.paper.title
    })
    sources = {
        row.reference.title: row.reference.url
        for table in board.tables if table.suite == 'full'
        for row in table.rows if row.reference
    }
    if titles:
        notes.insert(
            0, 'Paper numbers from the configs\' metafile.yml: ' +
            '; '.join(f'"{t}"' for t in titles) + '.')
    if sources:
        notes.append('Reference (not the paper): ' +
                     '; '.join(f'{title} <{url}>' if url else title
                               for title, url in sorted(sources.items())) +
                     '.')
    if notes:
        out += ['## Notes', '']
        for note in dict.fromkeys(notes):  # each once, one paragraph each
            out += [note, '']
    return '\n'.join(out).rstrip('\n') + '\n'


def _rounded(values: Dict[str, Optional[float]]) -> Dict:
    # 4 decimals of a percent: far below any evaluator's resolution, and
    # no float noise such as 0.22999999999999687 in the files.
    return {k: None if v is None else round(v, 4) for k, v in values.items()}


def _source_record(source: Any, fields: Tuple[str, ...],
                   **extra: Any) -> Optional[dict]:
    """``fields`` of a paper or reference entry, then ``extra``, then its
    rounded metrics; None for no entry."""
    if source is None:
        return None
    return dict({name: getattr(source, name)
                 for name in fields},
                **extra,
                metrics=_rounded(source.metrics))


def _records(board: Leaderboard) -> List[dict]:
    records = []
    for table in board.tables:
        for row in table.rows:
            paper = _source_record(
                row.paper, ('title', 'table', 'setting', 'split'),
                config=row.paper_config,
                same_setting=row.same_setting)
            reference = _source_record(row.reference,
                                       ('title', 'url', 'setting'))
            records.append(
                dict(
                    task=table.task.name,
                    suite=table.suite,
                    label=row.label,
                    configs=[run.name for run in row.runs],
                    setting=row.setting,
                    metrics=_rounded(row.values),
                    paper=paper,
                    reference=reference,
                    delta=_rounded(row.deltas),
                    spread=_rounded(row.spread),
                    counts={name: row.count(name)
                            for name in row.values},
                    seeds=row.seeds,
                    cost=_rounded(row.cost),
                    baseline=None
                    if row.baseline is None else row.baseline.label,
                    versus_baseline=row.versus_baseline(
                        table.task.columns[0].name),
                    evaluation=row.evaluation_text(),
                    evaluations=[
                        dict(
                            config=run.name,
                            path=run.path,
                            kind=run.evaluation.kind,
                            multi_scale=_multi_scale(run),
                            statistics=statistics_text(run),
                            timestamp=run.evaluation.timestamp,
                            step=run.evaluation.step,
                            file=run.evaluation.path,
                            num_evaluations=run.num_evaluations,
                            seed=run.seed,
                            cost=dict(
                                train_time=run.cost.train_time,
                                test_time=run.cost.test_time,
                                memory=run.cost.memory),
                            raw_metrics=dict(run.evaluation.metrics))
                        for run in row.runs
                    ]))
    return records


def _finite_or_null(value):
    """``value`` with every NaN/Inf float replaced by None (strict JSON has
    no such numbers; loading warned about them already)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def render_json(board: Leaderboard) -> str:
    """Strict JSON: ``{"rows": [...], "warnings": [...]}``; numbers in
    percent (4 decimals), ``null`` for "not applicable" and for a metric
    that is not a finite number (NaN/Inf, warned about when the run was
    read), ``raw_metrics`` as read otherwise."""
    records = _finite_or_null(_records(board))
    return json.dumps(
        dict(rows=records, warnings=list(board.warnings)),
        indent=2,
        ensure_ascii=False,
        allow_nan=False) + '\n'


def render_csv(board: Leaderboard) -> str:
    """CSV: one line per row, the union of all tasks' metric columns, each
    followed by ``<metric> paper``, ``<metric> delta`` and ``<metric>
    reference`` (not the paper), ``<metric> sd`` (sample standard
    deviation over seeds) and ``<metric> n`` (how many runs reported it),
    then the seeds, the cost columns and the comparison with the baseline;
    empty = not reported, ``n/a`` = not applicable."""
    names = [
        c.name for task in TASKS for c in task.columns if any(
            c.name in t.metric_names for t in board.tables if t.task is task)
    ]
    names = list(dict.fromkeys(names))
    header = ['task', 'suite', 'label', 'configs', 'setting']
    for name in names:
        header += [
            name, f'{name} paper', f'{name} delta', f'{name} reference',
            f'{name} sd', f'{name} n'
        ]
    header += [
        'paper row', 'paper split', 'paper config', 'paper same setting',
        'reference', 'reference url', 'seeds'
    ] + [name for name, _, _ in COST_COLUMNS] + ['vs baseline', 'evaluation']
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(header)
    for record in _records(board):
        paper = record['paper'] or {}
        reference = record['reference'] or {}
        line = [
            record['task'], record['suite'], record['label'],
            ' '.join(record['configs']), record['setting'] or ''
        ]
        for name in names:
            value = record['metrics'].get(name, '')
            line += [
                'n/a' if value is None else value,
                paper.get('metrics',
                          {}).get(name, ''), record['delta'].get(name, ''),
                reference.get('metrics', {}).get(name, ''),
                record['spread'].get(name, ''), record['counts'].get(name, '')
            ]
        cite = ''
        if paper:
            cite = PaperRow(paper['title'], paper['table'],
                            paper['setting']).cite()
        reference_row = ''
        if reference:
            reference_row = f'{reference["title"]}: {reference["setting"]}'
        line += [
            cite,
            paper.get('split') or '',
            paper.get('config', ''),
            paper.get('same_setting', ''), reference_row,
            reference.get('url') or '', ' '.join(map(str, record['seeds']))
        ] + [record['cost'].get(name, '') for name, _, _ in COST_COLUMNS
             ] + [record['versus_baseline'] or '', record['evaluation']]
        writer.writerow(line)
    return buffer.getvalue()


def write_leaderboard(board: Leaderboard, out: str) -> None:
    """Write ``board`` to ``out`` in the format its extension names."""
    ext = osp.splitext(out)[1].lower()
    renderers = {
        '.md': render_markdown,
        '.csv': render_csv,
        '.json': render_json
    }
    if ext not in renderers:
        raise ValueError(f'--out {out}: unknown format {ext or "(none)"}; '
                         f'use one of {", ".join(LEADERBOARD_FORMATS)}')
    folder = osp.dirname(osp.abspath(out))
    os.makedirs(folder, exist_ok=True)
    with open(out, 'w', encoding='utf-8', newline='') as f:
        f.write(renderers[ext](board))
