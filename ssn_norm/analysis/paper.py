"""Paper numbers from the configs' ``metafile.yml`` files.

Each model entry of a metafile (upstream format) may carry

* ``Paper:`` — the paper's row for exactly this setting, every number the
  row has::

      Paper:
        Title: 'Switchable Normalization for Learning-to-Normalize Deep
          Representation'
        Table: 'VII'
        Setting: 'SN(8,32)'
        Split: test      # only where the paper's split differs from ours
        Metrics: {mIoU: 72.2, mIoU(ms): 75.8}

* ``Reference:`` — a labelled number that is *not* the paper's (e.g. the
  released re-implementation's run of a setting), with ``Title``, ``URL``,
  ``Setting`` and ``Metrics``; shown apart from the paper, never compared.

* ``Paper Reference: <config name>`` — for a model without a paper row of
  its own (a mini-suite config): the full-size config whose paper row it
  shrinks.  That row is shown beside the model as a *different setting*,
  never compared.

Metric names are the table columns of :mod:`ssn_norm.analysis.tasks`.
Problems in these files are warned about (:class:`ResultWarning`) and the
offending entry is skipped.

:func:`render_paper_tables` renders every paper row as the markdown section
of ``docs/model_zoo.md`` between :data:`DOC_BEGIN` and :data:`DOC_END`
(``python tools/gather_results.py --paper-tables docs/model_zoo.md``).
"""
import os.path as osp
import re
import warnings
from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, List, Optional, Tuple

import yaml

from .runs import ResultWarning
from .tasks import TASKS

#: Every metric name a ``Paper: Metrics`` mapping may use.
METRIC_NAMES = tuple(
    dict.fromkeys(column.name for task in TASKS for column in task.columns))
#: Metric names of earlier metafiles and the names they became.
RENAMED_METRICS = {'mIoU(ms+flip)': 'mIoU(ms)'}


def _warn(message: str) -> None:
    warnings.warn(message, ResultWarning, stacklevel=3)


@dataclass(frozen=True)
class PaperRow:
    """A row of a paper table (or of a labelled reference): where it is and
    its numbers (percent).

    Attributes:
        title: the publication's title (``Title``).
        table: the table number, e.g. ``'VII'``; empty for a reference.
        setting: the row label as printed, e.g. ``'SyncSN(8,32)'``.
        metrics: every number of the row, by metric column name.
        split: the evaluation split of these numbers when it differs from
            the one the config evaluates (e.g. ``'test'``), else None.
        url: where the numbers are published (``URL``), if given.
    """

    title: str
    table: str
    setting: str
    metrics: Dict[str, float] = field(default_factory=dict)
    split: Optional[str] = None
    url: Optional[str] = None

    def cite(self) -> str:
        """``Table VI, SN+SN`` (``Table VII, SN(8,2), test split``)."""
        parts = [
            f'Table {self.table}' if self.table else '', self.setting,
            f'{self.split} split' if self.split else ''
        ]
        return ', '.join(p for p in parts if p)


@dataclass(frozen=True)
class ModelEntry:
    """What a metafile says about one config.

    Attributes:
        name: the config name (``Name``).
        source: the metafile it came from.
        paper: its own paper row (``Paper``), if any.
        paper_reference: the full-size config named by ``Paper Reference``.
        normalization: ``Metadata: Normalization`` (e.g. ``'SN'``), if set.
        reference: its labelled non-paper numbers (``Reference``), if any.
        training_data: ``Metadata: Training Data`` (e.g. ``'Cityscapes'``),
            if set.
    """

    name: str
    source: str
    paper: Optional[PaperRow] = None
    paper_reference: Optional[str] = None
    normalization: Optional[str] = None
    reference: Optional[PaperRow] = None
    training_data: Optional[str] = None


def _optional_text(raw: dict, key: str, field_name: str,
                   where: str) -> Optional[str]:
    """``raw[key]`` as a non-empty string, None if absent (warned if it is
    something else)."""
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return value.strip()
    _warn(f'{where}: {field_name}.{key} must be a non-empty text, got '
          f'{value!r}; ignored')
    return None


def _paper_row(raw, where: str, field_name: str = 'Paper') -> \
        Optional[PaperRow]:
    """The row in ``raw`` (a ``Paper`` or ``Reference`` mapping), or None
    (warned) when it has no usable number."""
    keys = ('Title, Table, Setting, Split and Metrics'
            if field_name == 'Paper' else 'Title, URL, Setting and Metrics')
    if not isinstance(raw, dict):
        _warn(f'{where}: {field_name} must be a mapping with {keys}, got '
              f'{raw!r}; ignored')
        return None
    metrics = raw.get('Metrics')
    if not isinstance(metrics, dict) or not metrics:
        _warn(f'{where}: {field_name}.Metrics must be a non-empty mapping '
              f'such as {{box AP: 41.0}}, got {metrics!r}; ignored')
        return None
    numbers = {}
    for name, value in metrics.items():
        if name in RENAMED_METRICS:
            _warn(f'{where}: {field_name}.Metrics has {name!r}, which is '
                  f'now called {RENAMED_METRICS[name]!r}; rename it; '
                  'ignored')
        elif name not in METRIC_NAMES:
            _warn(f'{where}: {field_name}.Metrics has unknown metric '
                  f'{name!r}; known: {", ".join(METRIC_NAMES)}; ignored')
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[str(name)] = float(value)
        else:
            _warn(f'{where}: {field_name}.Metrics[{name!r}] = {value!r} is '
                  'not a number; ignored')
    if not numbers:
        return None
    if field_name == 'Paper':
        unknown = sorted(set(map(str, raw)) - set(_PAPER_KEYS))
        split = _optional_text(raw, 'Split', field_name, where)
        url = None
    else:
        unknown = sorted(set(map(str, raw)) - set(_REFERENCE_KEYS))
        split = None
        url = _optional_text(raw, 'URL', field_name, where)
    if unknown:
        _warn(f'{where}: {field_name} has unknown key(s) '
              f'{", ".join(unknown)}; known: {keys}; ignored')
    return PaperRow(
        str(raw.get('Title', '')), str(raw.get('Table', '')),
        str(raw.get('Setting', '')), numbers, split, url)


_PAPER_KEYS = ('Title', 'Table', 'Setting', 'Split', 'Metrics')
_REFERENCE_KEYS = ('Title', 'URL', 'Setting', 'Metrics')


def _read_yaml(path: str):
    try:
        with open(path, encoding='utf-8') as f:
            return yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        _warn(f'{path}: unreadable ({error}); skipped')
        return None


def read_metafile(path: str) -> List[ModelEntry]:
    """The model entries of one ``metafile.yml`` (warned and skipped when
    malformed)."""
    data = _read_yaml(path)
    if data is None:
        return []
    models = data.get('Models') if isinstance(data, dict) else None
    if not isinstance(models, list):
        _warn(f'{path}: no Models list (upstream metafile format); skipped')
        return []
    entries = []
    for index, model in enumerate(models):
        name = model.get('Name') if isinstance(model, dict) else None
        if not isinstance(name, str) or not name:
            _warn(f'{path}: Models[{index}] has no Name; skipped')
            continue
        where = f'{path}: {name}'
        paper = (
            _paper_row(model['Paper'], where)
            if model.get('Paper') is not None else None)
        published = (
            _paper_row(model['Reference'], where, 'Reference')
            if model.get('Reference') is not None else None)
        reference = model.get('Paper Reference')
        if reference is not None and not isinstance(reference, str):
            _warn(f'{where}: Paper Reference must be a config name, got '
                  f'{reference!r}; ignored')
            reference = None
        metadata = model.get('Metadata')
        metadata = metadata if isinstance(metadata, dict) else {}
        norm = metadata.get('Normalization')
        data = metadata.get('Training Data')
        entries.append(
            ModelEntry(name, path, paper, reference,
                       str(norm) if norm is not None else None, published,
                       str(data) if isinstance(data, (str, int)) else None))
    return entries


def metafiles_of(path: str) -> List[str]:
    """The metafiles ``path`` stands for: the ``Import`` list of a
    ``model-index.yml`` (relative to it), or ``path`` itself."""
    data = _read_yaml(path)
    if isinstance(data, dict) and 'Import' in data:
        imports = data['Import']
        if not isinstance(imports, list):
            _warn(f'{path}: Import must be a list of metafile paths; '
                  'skipped')
            return []
        root = osp.dirname(osp.abspath(path))
        return [osp.join(root, str(p)) for p in imports]
    return [path]


def load_model_entries(paths: Iterable[str]) -> Dict[str, ModelEntry]:
    """Model entries by name from model-index files and/or metafiles.

    Missing files are warned about; a name defined twice keeps its first
    entry (warned); a ``Paper Reference`` to an unknown name is warned about
    and dropped (one to an entry without a ``Paper`` row is kept: the paper
    has no such row, e.g. for SSN, and none is shown).
    """
    entries: Dict[str, ModelEntry] = {}
    for index_path in paths:
        if not osp.isfile(index_path):
            _warn(f'{index_path}: no such file; no paper numbers from it')
            continue
        for metafile in metafiles_of(index_path):
            if not osp.isfile(metafile):
                _warn(f'{metafile} (imported by {index_path}): no such '
                      'file; no paper numbers from it')
                continue
            for entry in read_metafile(metafile):
                if entry.name in entries:
                    _warn(f'{metafile}: model {entry.name} is already '
                          f'defined in {entries[entry.name].source}; the '
                          'first entry is used')
                    continue
                entries[entry.name] = entry
    for name, entry in list(entries.items()):
        ref = entry.paper_reference
        if ref is None:
            continue
        if ref not in entries:
            _warn(f'{entry.source}: {name} has Paper Reference {ref}, which '
                  'is not defined in any metafile; ignored')
            entries[name] = replace(entry, paper_reference=None)
    return entries


# ------------------------------------------------- docs/model_zoo.md tables
#: The markers around the generated section of ``docs/model_zoo.md``.
DOC_BEGIN = ('<!-- paper-tables: generated from the metafiles by '
             '`python tools/gather_results.py --paper-tables '
             'docs/model_zoo.md`; do not edit by hand -->')
DOC_END = '<!-- /paper-tables -->'

_ROMAN = {'I': 1, 'V': 5, 'X': 10, 'L': 50, 'C': 100}


def _table_rank(table: str) -> Tuple[int, str]:
    """Roman table numbers in numeric order; anything else after them."""
    if not table or any(c not in _ROMAN for c in table.upper()):
        return (10**6, table)
    values = [_ROMAN[c] for c in table.upper()]
    total = sum(-v if i + 1 < len(values) and v < values[i + 1] else v
                for i, v in enumerate(values))
    return (total, table)


def _number(value: float) -> str:
    # The metafile's number, nothing rounded away: the shortest text that
    # reads back as the same float (36.7, 41.0, 38.07; 39.10 → 39.1).
    return repr(float(value))


def _cell(text: str) -> str:
    return text.replace('|', '\\|')


def _doc_table(header: List[str], lines: List[List[str]]) -> List[str]:
    out = ['| ' + ' | '.join(header) + ' |']
    out.append('|' + '|'.join(['---'] * len(header)) + '|')
    out += ['| ' + ' | '.join(map(_cell, cells)) + ' |' for cells in lines]
    return out


def _metric_columns(rows: Iterable[PaperRow]) -> List[str]:
    present = {name for row in rows for name in row.metrics}
    return [name for name in METRIC_NAMES if name in present]


def render_paper_tables(entries: Dict[str, ModelEntry]) -> str:
    """The papers' rows of ``entries`` as markdown, one table per paper
    table, then the labelled non-paper references.

    Guarantees: every ``Paper`` row appears once, under its publication
    and table (tables in numeric order, rows in metafile order), with every
    number it has and its config; a ``Split`` is shown in a column of its
    own; ``Reference`` numbers appear only in the separate last table,
    never among the paper's.  Deterministic: the same entries give the
    same text, so the generated documentation can be checked against it.
    """
    groups: Dict[Tuple[str, str], List[Tuple[str, PaperRow]]] = {}
    for name, entry in entries.items():
        if entry.paper is not None:
            key = (entry.paper.title, entry.paper.table)
            groups.setdefault(key, []).append((name, entry.paper))
    data = {name: entry.training_data for name, entry in entries.items()}
    out: List[str] = []
    titles = list(dict.fromkeys(title for title, _ in groups))
    for title, table in sorted(
            groups, key=lambda k: (titles.index(k[0]), _table_rank(k[1]))):
        rows = groups[(title, table)]
        metrics = _metric_columns(row for _, row in rows)
        with_split = any(row.split for _, row in rows)
        # A table over several datasets (Table VII) says which row is which.
        with_data = len({data[name] for name, _ in rows}) > 1
        header = (['Data'] if with_data else []) + ['Setting'] + metrics + (
            ['Split'] if with_split else [])
        lines = []
        for name, row in rows:
            cells = [data[name] or '—'] if with_data else []
            cells.append(row.setting or '—')
            cells += [
                _number(row.metrics[m]) if m in row.metrics else '—'
                for m in metrics
            ]
            if with_split:
                cells.append(row.split or 'ours')
            lines.append(cells + [f'`{name}`'])
        out += [
            f'### Table {table or "?"}', '', f'*{title or "(untitled)"}*', ''
        ]
        out += _doc_table(header + ['Config'], lines)
        if with_split:
            out += [
                '', 'Split: the paper evaluated that row on another split '
                'than the config does (`ours`: the same split).'
            ]
        out.append('')
    references = [(name, entry.reference) for name, entry in entries.items()
                  if entry.reference is not None]
    if references:
        metrics = _metric_columns(row for _, row in references)
        out += [
            '### Other published numbers (not the paper)', '',
            'Labelled references for configs whose setting another '
            'publication ran; never compared as the paper\'s numbers.', ''
        ]
        lines = []
        for name, row in references:
            source = f'[{row.title}]({row.url})' if row.url else row.title
            lines.append([source, row.setting or '—'] + [
                _number(row.metrics[m]) if m in row.metrics else '—'
                for m in metrics
            ] + [f'`{name}`'])
        out += _doc_table(['Source', 'Setting'] + metrics + ['Config'], lines)
        out.append('')
    if not out:
        return 'No paper rows in the metafiles.\n'
    return '\n'.join(out).rstrip('\n') + '\n'


def _section_bounds(text: str, where: str) -> Tuple[int, int]:
    begins = [m.end() for m in re.finditer(re.escape(DOC_BEGIN), text)]
    ends = [m.start() for m in re.finditer(re.escape(DOC_END), text)]
    if len(begins) != 1 or len(ends) != 1:
        raise ValueError(
            f'{where}: expected one generated section, the line {DOC_BEGIN} '
            f'followed by the line {DOC_END}; found {len(begins)} begin and '
            f'{len(ends)} end marker(s)')
    if ends[0] < begins[0]:
        raise ValueError(f'{where}: the end marker {DOC_END} comes before '
                         f'the begin marker {DOC_BEGIN}')
    return begins[0], ends[0]


def doc_section(text: str, where: str = 'the document') -> str:
    """The generated section of ``text`` (between :data:`DOC_BEGIN` and
    :data:`DOC_END`, without the blank lines around it); ValueError naming
    ``where`` unless there is exactly one."""
    begin, end = _section_bounds(text, where)
    return text[begin:end].strip('\n') + '\n'


def replace_doc_section(text: str,
                        section: str,
                        where: str = 'the document') -> str:
    """``text`` with its generated section replaced by ``section``; the
    rest is kept byte for byte."""
    begin, end = _section_bounds(text, where)
    return text[:begin] + '\n\n' + section.strip('\n') + '\n\n' + text[end:]
