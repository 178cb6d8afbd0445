"""Leaderboard tables in the papers' layouts, beside the papers' numbers.

Runs are grouped by task and by suite: full-size runs have one row per
config, with the paper's number for the same setting (the config's own
``Paper`` row) beside ours and the difference; mini-suite runs (a ``mini``
or ``tiny`` token in the config name) have one row per normaliser and show,
when their metafile entry has a ``Paper Reference``, the full-size parent's
paper number marked as a different setting, with no difference.

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
"""
import csv
import io
import json
import math
import os
import os.path as osp
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

from .paper import ModelEntry, PaperRow, load_model_entries
from .runs import Run, find_runs
from .tasks import (NORM_ORDER, SEGMENTATION, TASKS, Task, is_mini,
                    is_multi_scale, normalizers_in_name, scaled_metrics,
                    single_scale_name)

#: Output formats of :func:`write_leaderboard`, by file extension.
FORMATS = ('.md', '.csv', '.json')
Paths = Sequence[str]
#: Appended to the label of a detection / video ``--tta`` run's own row.
TTA_LABEL = ' (--tta)'


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
        """Which evaluation each number comes from."""
        if len(self.runs) == 1:
            return self.runs[0].describe()
        return '; '.join(
            ('ms: ' if _multi_scale(run) else 'ss: ') + run.describe()
            for run in self.runs)


@dataclass
class Table:
    """The rows of one task and suite (``'full'`` or ``'mini'``)."""

    task: Task
    suite: str
    rows: List[Row]

    @property
    def metric_names(self) -> List[str]:
        """The task's columns that at least one row, or the paper row shown
        beside it, has a number for."""
        return [
            c.name for c in self.task.columns if any(
                c.name in row.values or (
                    row.paper is not None and c.name in row.paper.metrics)
                for row in self.rows)
        ]

    @property
    def paper_names(self) -> List[str]:
        """Metric columns for which at least one row shows a paper number.
        """
        return [
            name for name in self.metric_names if any(
                row.paper and name in row.paper.metrics for row in self.rows)
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
                if row is None or set(values) & set(row.values):
                    row = Row(key, [])
                    rows.append(row)
                    open_rows[key] = row
                row.runs.append(run)
                row.values.update(values)
            for row in rows:
                _attach_paper(row, entries)
                row.setting = _setting(row)
                if suite == 'mini':
                    tta = TTA_LABEL if row.label.endswith(TTA_LABEL) else ''
                    row.label = (row.setting or row.label) + tta
                elif len(row.runs) == 1 and task is SEGMENTATION:
                    row.label = row.runs[0].name  # e.g. a lone ms test
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


def _md_table(header: List[str], lines: List[List[str]]) -> List[str]:
    out = ['| ' + ' | '.join(header) + ' |']
    out.append('|' + '|'.join(['---'] * len(header)) + '|')
    out += ['| ' + ' | '.join(cells) + ' |' for cells in lines]
    return out


def _render_table(table: Table) -> List[str]:
    metrics = table.metric_names
    papers = set(table.paper_names)
    deltas = set(table.delta_names)
    mini = table.suite == 'mini'
    references = not mini and any(row.reference for row in table.rows)
    header = ['Norm' if mini else 'Config'] + ([] if mini else ['Setting'])
    for name in metrics:
        header.append(name)
        if name in papers:
            header.append('paper' + ('*' if mini else ''))
        if name in deltas:
            header.append('Δ')
    if mini:
        header += ['Config', 'Paper setting*'] if papers else ['Config']
    if references:
        header.append('Reference (not the paper)')
    header.append('Evaluation')
    lines = []
    for row in table.rows:
        cells = [row.label] + ([] if mini else [row.setting or '—'])
        paper_metrics = row.paper.metrics if row.paper else {}
        for name in metrics:
            ours = row.values.get(name)
            cells.append(_fmt(ours, 'n/a' if name in row.values else '—'))
            if name in papers:
                theirs = paper_metrics.get(name)
                text = _fmt(theirs)
                if theirs is not None and not row.same_setting:
                    text += '*'
                if theirs is not None and row.paper.split:
                    text += f' ({row.paper.split})'
                cells.append(text)
            if name in deltas and name in row.deltas:
                cells.append(_fmt_delta(ours, paper_metrics[name]))
            elif name in deltas:
                cells.append('—')
        if mini:
            cells.append(', '.join(run.name for run in row.runs))
            if papers and row.paper:
                cells.append(f'{row.paper.cite()} ({row.paper_config})')
            elif papers:
                cells.append('—')
        elif row.paper is not None and row.same_setting and row.paper.table:
            split = f', {row.paper.split} split' if row.paper.split else ''
            cells[1] += f' (Table {row.paper.table}{split})'
        if references:
            cells.append(_reference_text(row.reference))
        cells.append(row.evaluation_text())
        lines.append(cells)
    return _md_table(header, lines)


def _reference_text(reference: Optional[PaperRow]) -> str:
    """``box AP 39.1 (Faster R-CNN R-50-FPN SN(8,2) 2x)``, or ``—``."""
    if reference is None:
        return '—'
    numbers = ', '.join(f'{name} {_fmt(value)}'
                        for name, value in reference.metrics.items())
    return f'{numbers} ({reference.setting})' if reference.setting \
        else numbers


def render_markdown(board: Leaderboard) -> str:
    """Markdown: one section per task and suite, notes under each table."""
    if not board.tables:
        return 'No runs with results found.\n'
    out = []
    for table in board.tables:
        out += [f'## {table.title}', '']
        out += _render_table(table)
        notes = []
        titles = sorted({
            row.paper.title
            for row in table.rows if row.paper and row.paper.title
        })
        if titles:
            notes.append('Paper numbers from the configs\' metafile.yml: ' +
                         '; '.join(f'"{t}"' for t in titles) + '.')
        if table.delta_names:
            notes.append('Δ = ours − paper, same setting and split, percent '
                         'points.')
        splits = sorted({
            row.paper.split
            for row in table.rows if row.paper and row.paper.split
        })
        if splits:
            notes.append(f'({"/".join(splits)}): the paper\'s number is on '
                         'that split, ours on the split the config '
                         'evaluates; no difference is computed.')
        if any(row.paper and not row.same_setting for row in table.rows):
            notes.append('\\* a different setting (the full-size config '
                         'named by a mini config\'s `Paper Reference`, or a '
                         '`--tta` test of a setting the paper tested at one '
                         'scale), shown for orientation only; no difference '
                         'is computed.')
        sources = {
            row.reference.title: row.reference.url
            for row in table.rows if row.reference
        }
        if sources and table.suite == 'full':
            notes.append('Reference (not the paper): ' +
                         '; '.join(f'{title} <{url}>' if url else title
                                   for title, url in sorted(sources.items())) +
                         '.')
        if any(None in row.values.values() for row in table.rows):
            notes.append('n/a: COCO reports -1 when the evaluation split has '
                         'no object of that size.')
        if 'mIoU(ms)' in table.metric_names:
            notes.append('mIoU(ms): from a multi-scale test of the same '
                         'config (`tools/test.py --tta`, or an old '
                         '`_ms-flip-test` config); the paper\'s text does not '
                         'say whether its multi-scale test flipped.')
        out.append('')
        for note in notes:  # one paragraph each
            out += [note, '']
    return '\n'.join(out).rstrip('\n') + '\n'


def _rounded(values: Dict[str, Optional[float]]) -> Dict:
    # 4 decimals of a percent: far below any evaluator's resolution, and
    # no float noise such as 0.22999999999999687 in the files.
    return {k: None if v is None else round(v, 4) for k, v in values.items()}


def _records(board: Leaderboard) -> List[dict]:
    records = []
    for table in board.tables:
        for row in table.rows:
            paper = None
            if row.paper is not None:
                paper = dict(
                    title=row.paper.title,
                    table=row.paper.table,
                    setting=row.paper.setting,
                    split=row.paper.split,
                    config=row.paper_config,
                    same_setting=row.same_setting,
                    metrics=_rounded(row.paper.metrics))
            reference = None
            if row.reference is not None:
                reference = dict(
                    title=row.reference.title,
                    url=row.reference.url,
                    setting=row.reference.setting,
                    metrics=_rounded(row.reference.metrics))
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
                    evaluation=row.evaluation_text(),
                    evaluations=[
                        dict(
                            config=run.name,
                            path=run.path,
                            kind=run.evaluation.kind,
                            multi_scale=_multi_scale(run),
                            timestamp=run.evaluation.timestamp,
                            step=run.evaluation.step,
                            file=run.evaluation.path,
                            num_evaluations=run.num_evaluations,
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
    reference`` (not the paper); empty = not reported, ``n/a`` = not
    applicable."""
    names = [
        c.name for task in TASKS for c in task.columns if any(
            c.name in t.metric_names for t in board.tables if t.task is task)
    ]
    names = list(dict.fromkeys(names))
    header = ['task', 'suite', 'label', 'configs', 'setting']
    for name in names:
        header += [name, f'{name} paper', f'{name} delta', f'{name} reference']
    header += [
        'paper row', 'paper split', 'paper config', 'paper same setting',
        'reference', 'reference url', 'evaluation'
    ]
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
                paper.get('metrics', {}).get(name, ''),
                record['delta'].get(name, ''),
                reference.get('metrics', {}).get(name, '')
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
            reference.get('url') or '', record['evaluation']
        ]
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
                         f'use one of {", ".join(FORMATS)}')
    folder = osp.dirname(osp.abspath(out))
    os.makedirs(folder, exist_ok=True)
    with open(out, 'w', encoding='utf-8', newline='') as f:
        f.write(renderers[ext](board))
