"""The benchmark suite: generate data, train and evaluate every (task,
normaliser) pair, then tabulate the results and draw the learned ratios.

Presets:

* ``mini``: tiny generated datasets in the real layouts (COCO instances,
  Cityscapes, Kinetics videos) and shrunk child configs of the real benchmark
  configs, so every code path of a full run is exercised on one CPU.
* ``smoke``: ``mini`` with far fewer iterations, for the test suite.
* ``full``: the real benchmark configs on the real datasets (paths as in the
  upstream configs, e.g. ``data/coco``, ``data/cityscapes``,
  ``data/kinetics400``), launched with ``torch.distributed.run`` on
  ``--gpus`` GPUs.

Each run gets ``<work_root>/<config name>``.  A run is done once its
``suite_result.json`` exists; an interrupted run resumes from its last
checkpoint, so re-running the same command continues where it stopped.
"""
import json
import os
import os.path as osp
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TASKS = ('det', 'seg', 'video')
NORMS = ('baseline', 'gn', 'sn', 'ssn')
DONE_FILE = 'suite_result.json'


@dataclass
class Task:
    """One task of a preset: its configs per normaliser and its data."""
    name: str
    configs: Dict[str, str]
    data_root: Optional[str] = None
    generator: Optional[str] = None  # 'module:function'
    generator_kwargs: dict = field(default_factory=dict)
    cfg_options: Dict[str, object] = field(default_factory=dict)


def _mini_tasks() -> Dict[str, Task]:
    return {
        'det':
        Task(
            'det',
            configs={
                'baseline':
                'configs/mask_rcnn/mini/TODO-bn.py',
                'gn': 'configs/mask_rcnn/mini/TODO-gn.py',
                'sn': 'configs/mask_rcnn/mini/TODO-sn.py',
                'ssn': 'configs/mask_rcnn/mini/TODO-ssn.py',
            },
            data_root='data/tiny_coco/',
            generator='ssn_norm.datasets.tiny_coco:make_tiny_coco'),
        'seg':
        Task(
            'seg',
            configs={
                'baseline': 'configs/deeplabv3/mini/TODO-syncbn.py',
                'gn': 'configs/deeplabv3/mini/TODO-gn.py',
                'sn': 'configs/deeplabv3/mini/TODO-sn.py',
                'ssn': 'configs/deeplabv3/mini/TODO-ssn.py',
            },
            data_root='data/tiny_cityscapes/',
            generator='ssn_norm.datasets.tiny_cityscapes:make_tiny_cityscapes'
        ),
        'video':
        Task(
            'video',
            configs={
                'baseline': 'configs/i3d/mini/TODO-bn.py',
                'gn': 'configs/i3d/mini/TODO-gn.py',
                'sn': 'configs/i3d/mini/TODO-sn.py',
                'ssn': 'configs/i3d/mini/TODO-ssn.py',
            },
            data_root='data/tiny_kinetics/',
            generator='ssn_norm.datasets.tiny_kinetics:make_tiny_kinetics'),
    }
