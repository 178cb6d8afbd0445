"""Paper numbers from the configs' ``metafile.yml`` files.

Each model entry of a metafile (upstream format) may carry

* ``Paper:`` — the paper's row for exactly this setting::

      Paper:
        Title: 'Differentiable Learning-to-Normalize via Switchable ...'
        Table: 'VI'
        Setting: 'SN+SN'
        Metrics: {box AP: 41.0, mask AP: 36.5}

* ``Paper Reference: <config name>`` — for a model without a paper row of
  its own (a mini-suite config): the full-size config whose paper row it
  shrinks.  That row is shown beside the model as a *different setting*,
  never compared.

Metric names are the table columns of :mod:`ssn_norm.analysis.tasks`.
Problems in these files are warned about (:class:`ResultWarning`) and the
offending entry is skipped.
"""
import os.path as osp
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

import yaml

from .runs import ResultWarning
from .tasks import TASKS

#: Every metric name a ``Paper: Metrics`` mapping may use.
METRIC_NAMES = tuple(
    dict.fromkeys(column.name for task in TASKS for column in task.columns))


def _warn(message: str) -> None:
    warnings.warn(message, ResultWarning, stacklevel=3)


@dataclass(frozen=True)
class PaperRow:
    """A row of a paper table: where it is and its numbers (percent)."""

    title: str
    table: str
    setting: str
    metrics: Dict[str, float] = field(default_factory=dict)

    def cite(self) -> str:
        """``Table VI, SN+SN``."""
        parts = [f'Table {self.table}' if self.table else '', self.setting]
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
    """

    name: str
    source: str
    paper: Optional[PaperRow] = None
    paper_reference: Optional[str] = None
    normalization: Optional[str] = None


def _paper_row(raw, where: str) -> Optional[PaperRow]:
    if not isinstance(raw, dict):
        _warn(f'{where}: Paper must be a mapping with Title, Table, Setting '
              f'and Metrics, got {raw!r}; ignored')
        return None
    metrics = raw.get('Metrics')
    if not isinstance(metrics, dict) or not metrics:
        _warn(f'{where}: Paper.Metrics must be a non-empty mapping such as '
              f'{{box AP: 41.0}}, got {metrics!r}; ignored')
        return None
    numbers = {}
    for name, value in metrics.items():
        if name not in METRIC_NAMES:
            _warn(f'{where}: Paper.Metrics has unknown metric {name!r}; '
                  f'known: {", ".join(METRIC_NAMES)}; ignored')
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[str(name)] = float(value)
        else:
            _warn(f'{where}: Paper.Metrics[{name!r}] = {value!r} is not a '
                  'number; ignored')
    if not numbers:
        return None
    return PaperRow(
        str(raw.get('Title', '')), str(raw.get('Table', '')),
        str(raw.get('Setting', '')), numbers)


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
        reference = model.get('Paper Reference')
        if reference is not None and not isinstance(reference, str):
            _warn(f'{where}: Paper Reference must be a config name, got '
                  f'{reference!r}; ignored')
            reference = None
        metadata = model.get('Metadata')
        norm = (
            metadata.get('Normalization')
            if isinstance(metadata, dict) else None)
        entries.append(
            ModelEntry(name, path, paper, reference,
                       str(norm) if norm is not None else None))
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
            entries[name] = ModelEntry(entry.name, entry.source, entry.paper,
                                       None, entry.normalization)
    return entries
