"""The three benchmark tasks: which metric keys identify them and how their
numbers are shown in the papers' tables.

Metric names (``box AP``, ``mIoU``, ``Top 1 Accuracy`` ...) are the ones the
configs' ``metafile.yml`` files use under ``Paper: Metrics``, so a run's
number and the paper's meet in the same column.
"""
import re
from typing import Dict, Mapping, NamedTuple, Optional, Tuple

#: A config-name token of the old one-wrapper-config-per-test style
#: (``..._ms-flip-test``, ``..._aug``, ``..._tta``).  Runs of today's
#: ``tools/test.py --tta`` say so in their run-info file instead
#: (:data:`~ssn_norm.analysis.runs.RUN_INFO`); either way the run's mIoU
#: fills the ``mIoU(ms)`` column of the single-scale config's row.
MULTI_SCALE = re.compile(
    r'[_\-](?:ms|aug|tta|msflip)(?:-flip)?(?:-test)?(?=[_\-]|$)', re.I)
#: Config-name tokens of the mini suite (``..._mini_tiny-coco``).
MINI_TOKENS = ('mini', 'tiny')

_NORM_TOKENS = {
    'bn': 'BN',
    'syncbn': 'SyncBN',
    'gn': 'GN',
    'sn': 'SN',
    'ssn': 'SSN',
    'syncsn': 'SyncSN',
    'syncssn': 'SyncSSN',
}
#: The config-name tokens that name a normaliser (``sn`` in
#: ``mask-rcnn_r50-sn_fpn_sn-head_2x_coco``).
NORM_NAME_TOKENS = frozenset(_NORM_TOKENS)
#: Row order of normalisers in the mini-suite tables.
NORM_ORDER = ('BN†', 'BN', 'SyncBN', 'GN', 'SN', 'SyncSN', 'SSN', 'SyncSSN')


class Column(NamedTuple):
    """One metric column: its name, the mmengine key, the factor to %."""
    name: str
    key: str
    scale: float


class Task(NamedTuple):
    """A benchmark task and its table layout."""
    name: str
    title: str
    columns: Tuple[Column, ...]

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)


DETECTION = Task('detection', 'Detection (COCO)', (
    Column('box AP', 'coco/bbox_mAP', 100.),
    Column('AP50', 'coco/bbox_mAP_50', 100.),
    Column('AP75', 'coco/bbox_mAP_75', 100.),
    Column('APs', 'coco/bbox_mAP_s', 100.),
    Column('APm', 'coco/bbox_mAP_m', 100.),
    Column('APl', 'coco/bbox_mAP_l', 100.),
    Column('mask AP', 'coco/segm_mAP', 100.),
    Column('mask AP50', 'coco/segm_mAP_50', 100.),
    Column('mask AP75', 'coco/segm_mAP_75', 100.),
))
# mmseg reports percent already.  The multi-scale column is filled from
# test-time-augmentation runs (``tools/test.py --tta``).  It is "ms", not
# "ms+flip": the SN paper's text does not say whether its multi-scale test
# flipped.
SEGMENTATION = Task('segmentation', 'Semantic segmentation', (
    Column('mIoU', 'mIoU', 1.),
    Column('mIoU(ms)', 'mIoU', 1.),
    Column('aAcc', 'aAcc', 1.),
    Column('mAcc', 'mAcc', 1.),
))
VIDEO = Task('video', 'Video classification', (
    Column('Top 1 Accuracy', 'acc/top1', 100.),
    Column('Top 5 Accuracy', 'acc/top5', 100.),
    Column('Mean Class Accuracy', 'acc/mean1', 100.),
))
TASKS = (DETECTION, SEGMENTATION, VIDEO)

# Keys whose presence identifies a task, in priority order.
_IDENTIFYING_KEYS = (
    (DETECTION, ('coco/bbox_mAP', 'coco/segm_mAP')),
    (SEGMENTATION, ('mIoU', )),
    (VIDEO, ('acc/top1', )),
)


def recognise_task(metrics: Mapping[str, object]) -> Optional[Task]:
    """The task whose identifying metric keys ``metrics`` contains, or None.

    Detection: ``coco/bbox_mAP`` or ``coco/segm_mAP``; segmentation:
    ``mIoU``; video: ``acc/top1``.
    """
    for task, keys in _IDENTIFYING_KEYS:
        if any(key in metrics for key in keys):
            return task
    return None


def _tokens(name: str):
    return re.split(r'[_\-.]', name.lower())


def is_multi_scale(name: str) -> bool:
    """Whether a config name marks a multi-scale test in the old style (see
    :data:`MULTI_SCALE`)."""
    return MULTI_SCALE.search(name) is not None


def single_scale_name(name: str) -> str:
    """``name`` without its multi-scale token: the config of its setting."""
    return MULTI_SCALE.sub('', name)


def is_mini(name: str) -> bool:
    """Whether a config name belongs to the mini suite (a ``mini`` or
    ``tiny`` token)."""
    return any(token in MINI_TOKENS for token in _tokens(name))


def normalizers_in_name(name: str) -> Optional[str]:
    """The normalisers a config name states, in order, joined with ``+``.

    ``mask-rcnn_r50-sn_fpn_sn-head_2x_coco`` → ``'SN+SN'`` (backbone + head
    as in the papers' settings); ``i3d_r50-ssn_mini`` → ``'SSN'``; None if
    the name states none.
    """
    found = [_NORM_TOKENS[t] for t in _tokens(name) if t in _NORM_TOKENS]
    return '+'.join(found) if found else None


def scaled_metrics(task: Task, metrics: Mapping[str, object],
                   multi_scale: bool) -> Dict[str, Optional[float]]:
    """The task's columns filled from raw mmengine ``metrics``, in percent.

    Only numeric values are taken; a key that is absent leaves its column
    out (it never becomes 0).  A negative COCO AP (pycocotools' -1: no
    object of that size or category in the split) becomes None, "not
    applicable".  For segmentation, ``mIoU`` goes to the ``mIoU(ms)``
    column when ``multi_scale`` and to ``mIoU`` otherwise.
    """
    values: Dict[str, Optional[float]] = {}
    for column in task.columns:
        if task is SEGMENTATION and column.key == 'mIoU' and (multi_scale != (
                column.name == 'mIoU(ms)')):
            continue
        if task is SEGMENTATION and multi_scale and column.key != 'mIoU':
            continue  # aAcc/mAcc are reported for the single-scale test
        value = metrics.get(column.key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            undefined = task is DETECTION and value < 0
            values[column.name] = (None if undefined else float(value) *
                                   column.scale)
    return values
