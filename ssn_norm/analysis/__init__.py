"""Results and ratio analysis: leaderboards, paper numbers, ratio plots.

Library behind ``tools/gather_results.py`` and ``tools/plot_ratios.py`` and
the numerics of :class:`~ssn_norm.hooks.RatioLoggerHook`.  matplotlib is
imported only when a figure is drawn.
"""
from .leaderboard import (LEADERBOARD_FORMATS, Leaderboard, Row, Table,
                          build_leaderboard, gather, render_csv, render_json,
                          render_markdown, write_leaderboard)
from .paper import ModelEntry, PaperRow, load_model_entries, read_metafile
from .plot import (plot_layer_ratios, plot_ratio_dynamics, read_ratio_scalars,
                   scalars_files)
from .ratios import (STAGE_PREFIXES, LayerRatios, checkpoint_ratios, group_of,
                     grouped, mean_shares, model_ratios, state_dict_ratios)
from .runs import (Cost, Evaluation, ResultWarning, Run, find_run_dirs,
                   find_runs, load_run, split_seed)
from .tasks import DETECTION, SEGMENTATION, TASKS, VIDEO, Task, recognise_task

__all__ = [
    'Cost', 'DETECTION', 'Evaluation', 'LEADERBOARD_FORMATS', 'LayerRatios',
    'Leaderboard', 'ModelEntry', 'PaperRow', 'ResultWarning', 'Row', 'Run',
    'SEGMENTATION', 'STAGE_PREFIXES', 'TASKS', 'Table', 'Task', 'VIDEO',
    'build_leaderboard', 'checkpoint_ratios', 'find_run_dirs', 'find_runs',
    'gather', 'group_of', 'grouped', 'load_model_entries', 'load_run',
    'mean_shares', 'model_ratios', 'plot_layer_ratios', 'plot_ratio_dynamics',
    'read_metafile', 'read_ratio_scalars', 'recognise_task', 'render_csv',
    'render_json', 'render_markdown', 'scalars_files', 'split_seed',
    'state_dict_ratios', 'write_leaderboard'
]
