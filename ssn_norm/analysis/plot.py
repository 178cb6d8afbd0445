"""Pictures of the learned normaliser choices, in the style of the papers.

* :func:`plot_layer_ratios` — per-layer IN/LN/BN ratios of means and
  variances as stacked bars, layers in depth order, backbone and
  neck/heads in separate rows; one column per checkpoint (SN paper Fig. 5/8,
  SSN paper's per-layer figures).
* :func:`plot_ratio_dynamics` — the ratios logged by
  :class:`~ssn_norm.hooks.RatioLoggerHook` over training (one panel per
  stage), with the number of one-hot SSN layers and the radius.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no
display, no global state), so this works on servers and in threads.
"""
import os
import os.path as osp
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..ops.moments import NAMES
from .ratios import LayerRatios, group_of, present_normalizers
from .runs import json_objects

#: Bar / line colour of each normaliser; another declared member is grey.
COLORS = {'IN': '#4C72B0', 'LN': '#DD8452', 'BN': '#55A868', 'GN': '#C44E52'}
_OTHER_COLOR = '#8C8C8C'
_STATISTICS = ('mean', 'var')
_RATIO_KEY = re.compile(r'^(?:train/)?ratio/(?P<group>.+)/'
                        r'(?P<stat>mean|var)_(?P<norm>[A-Z]+)$')
_TIMESTAMP = re.compile(r'^\d{8}_\d{6}$')


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _check_out(figure, out: str) -> None:
    ext = osp.splitext(out)[1].lower().lstrip('.')
    supported = figure.canvas.get_supported_filetypes()
    if ext not in supported:
        raise ValueError(f'--out {out}: cannot write {ext or "(none)"!r} '
                         f'images; use one of {", ".join(sorted(supported))}'
                         ' (e.g. .png)')


def _save(figure, out: str) -> None:
    folder = osp.dirname(osp.abspath(out))
    os.makedirs(folder, exist_ok=True)
    figure.savefig(out)


Parts = List[Tuple[str, List[LayerRatios]]]


def split_parts(layers: Sequence[LayerRatios]) -> Parts:
    """``[('backbone', ...), ('neck and heads', ...)]`` for a detector or
    segmentor, ``[('layers', ...)]`` for a model without a backbone; empty
    parts are left out, depth order is kept."""
    backbone = [lay for lay in layers if lay.name.split('.')[0] == 'backbone']
    rest = [lay for lay in layers if lay.name.split('.')[0] != 'backbone']
    if not backbone:
        return [('layers', rest)] if rest else []
    parts = [('backbone', backbone)]
    if rest:
        parts.append(('neck and heads', rest))
    return parts


def describe(layers: Sequence[LayerRatios]) -> str:
    """``SN, 53 layers`` or ``SSN r=0.62, 20/53 one-hot`` (mixed models
    list both kinds)."""
    parts = []
    sn = [lay for lay in layers if lay.kind == 'SN']
    ssn = [lay for lay in layers if lay.kind == 'SSN']
    if sn:
        parts.append(f'SN, {len(sn)} layers')
    if ssn:
        radii = sorted({round(lay.radius, 4) for lay in ssn})
        radius = (f'r={radii[0]:.3g}'
                  if len(radii) == 1 else f'r={radii[0]:.3g}..{radii[-1]:.3g}')
        one_hot = sum(lay.one_hot for lay in ssn)
        parts.append(f'SSN {radius}, {one_hot}/{len(ssn)} one-hot')
    return '; '.join(parts)


def _draw_bars(ax, layers: Sequence[LayerRatios], statistic: str) -> None:
    x = np.arange(len(layers))
    bottom = np.zeros(len(layers))
    # Group SN layers are drawn one bar per channel group (``name[g]``).
    for normalizer in present_normalizers(layers):
        heights = np.array(
            [lay.share(statistic, normalizer) for lay in layers])
        ax.bar(
            x,
            heights,
            bottom=bottom,
            width=0.85,
            linewidth=0,
            color=COLORS.get(normalizer, _OTHER_COLOR),
            label=normalizer)
        bottom += heights
    index = _STATISTICS.index(statistic)
    frozen = [i for i, lay in enumerate(layers) if lay.frozen[index]]
    if frozen:
        ax.scatter(
            frozen, [1.05] * len(frozen),
            marker='v',
            s=7,
            color='k',
            clip_on=False,
            linewidths=0,
            label='frozen one-hot')
    # Stage boundaries and stage names under the bars.
    starts, names = [], []
    for i, lay in enumerate(layers):
        group = group_of(lay.name)
        if not names or names[-1] != group:
            starts.append(i)
            names.append(group)
    for start in starts[1:]:
        ax.axvline(start - 0.5, color='0.25', linewidth=0.6, linestyle=':')
    ends = starts[1:] + [len(layers)]
    ax.set_xticks([(s + e - 1) / 2 for s, e in zip(starts, ends)])
    ax.set_xticklabels([n.replace('backbone.', '') for n in names],
                       fontsize=7,
                       rotation=20)
    ax.tick_params(axis='x', length=0)
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_ylim(0, 1)
    ax.set_yticks([0, 0.5, 1])
    ax.tick_params(axis='y', labelsize=7)


def plot_layer_ratios(panels: Sequence[Tuple[str, Sequence[LayerRatios]]],
                      out: str) -> None:
    """Stacked IN/LN/BN bars per layer; one column per ``(label, layers)``.

    Rows: for each part (backbone, neck and heads) the mean ratios, then
    the variance ratios.  A triangle above a bar marks a frozen one-hot SSN
    ratio.  The image format follows ``out``'s extension.

    Raises:
        ValueError: no panels, more than two, one without layers, or an
            image format matplotlib cannot write.
    """
    if not 1 <= len(panels) <= 2:
        raise ValueError('plot_layer_ratios draws one or two checkpoints, '
                         f'got {len(panels)}')
    for label, layers in panels:
        if not layers:
            raise ValueError(f'{label}: no SN/SSN layers to plot')
    split = [dict(split_parts(layers)) for _, layers in panels]
    parts = list(dict.fromkeys(name for s in split for name in s))
    longest = max(len(layers) for _, layers in panels)
    width = min(max(0.1 * longest + 2.0, 6.0), 18.0) * len(panels)
    figure = _new_figure(width, 2.0 * 2 * len(parts) + 0.9)
    _check_out(figure, out)
    axes = figure.subplots(
        2 * len(parts), len(panels), squeeze=False, sharey=True)
    for column, ((label, layers), by_part) in enumerate(zip(panels, split)):
        axes[0][column].set_title(
            f'{label}\n{describe(layers)}', fontsize=9, pad=10)
        for p, part in enumerate(parts):
            for s, statistic in enumerate(_STATISTICS):
                ax = axes[2 * p + s][column]
                if column == 0:
                    ax.set_ylabel(f'{part}\n{statistic} ratio', fontsize=8)
                if part not in by_part:
                    ax.text(
                        0.5,
                        0.5,
                        f'no {part} layers',
                        ha='center',
                        va='center',
                        transform=ax.transAxes)
                    ax.set_xticks([])
                    continue
                _draw_bars(ax, by_part[part], statistic)
    handles, labels = [], []
    for ax in figure.axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            if text not in labels:
                handles.append(handle)
                labels.append(text)
    figure.legend(
        handles,
        labels,
        loc='upper center',
        ncol=len(labels),
        fontsize=8,
        frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    _save(figure, out)


# ------------------------------------------------------------------ dynamics
def scalars_files(path: str) -> List[str]:
    """``path`` itself if it is a file; for a run directory (or a launch
    folder) every ``vis_data/scalars.json`` in launch order, so a resumed
    run is read as one history.

    Raises:
        FileNotFoundError: nothing to read at ``path``.
    """
    if osp.isfile(path):
        return [path]
    candidates = []
    if osp.isdir(path):
        own = osp.join(path, 'vis_data', 'scalars.json')
        if osp.isfile(own):
            return [own]
        for name in sorted(os.listdir(path)):
            scalars = osp.join(path, name, 'vis_data', 'scalars.json')
            if _TIMESTAMP.match(name) and osp.isfile(scalars):
                candidates.append(scalars)
    if not candidates:
        raise FileNotFoundError(
            f'{path}: no scalars.json (expected a file, or a run directory '
            'with <timestamp>/vis_data/scalars.json)')
    return candidates


def read_ratio_scalars(
        paths: Sequence[str]) -> Dict[str, List[Tuple[float, float]]]:
    """``{key: [(step, value), ...]}`` of the ratio-related training scalars
    (``ratio/...`` from :class:`~ssn_norm.hooks.RatioLoggerHook`, and the
    ``ssn_radius`` of :class:`~ssn_norm.hooks.SparsestMaxRadiusHook`),
    ``train/`` prefixes removed.  Malformed lines are warned about and
    skipped."""
    series: Dict[str, List[Tuple[float, float]]] = {}
    for path in paths:
        with open(path, encoding='utf-8') as f:
            lines = f.readlines()
        for entry in json_objects(lines, path):
            if 'step' not in entry:
                continue
            for key, value in entry.items():
                key = key[len('train/'):] if key.startswith('train/') else key
                if not (key.startswith('ratio/') or key == 'ssn_radius'):
                    continue
                if isinstance(value, (int, float)):
                    series.setdefault(key, []).append(
                        (float(entry['step']), float(value)))
    return series


def plot_ratio_dynamics(path: str,
                        out: str,
                        groups: Optional[Sequence[str]] = None) -> None:
    """Ratio dynamics of a run (:func:`scalars_files` of ``path``).

    One row per logged group (``all`` first, then stages in log order),
    mean ratios left and variance ratios right, a line per normaliser over
    the training step; a last row shows the number of one-hot SSN layers
    and the radius when they were logged.

    Args:
        path: a ``scalars.json`` or a run directory.
        out: image file.
        groups: only these groups (default: all logged).

    Raises:
        ValueError: no ratio scalars in the file (the run did not use
            ``RatioLoggerHook``), or an unknown group was asked for.
    """
    files = scalars_files(path)
    series = read_ratio_scalars(files)
    found: Dict[str, Dict[Tuple[str, str], List]] = {}
    for key, points in series.items():
        match = _RATIO_KEY.match(key)
        if match:
            found.setdefault(match['group'],
                             {})[(match['stat'], match['norm'])] = points
    if not found:
        raise ValueError(
            f'{", ".join(files)}: no ratio/<group>/<mean|var>_<IN|LN|BN> '
            "scalars; train with custom_hooks=[dict(type='RatioLoggerHook')]")
    names = sorted(found, key=lambda g: (g != 'all', ))  # stable: log order
    if groups is not None:
        unknown = [g for g in groups if g not in found]
        if unknown:
            raise ValueError(f'groups {unknown} were not logged; logged: '
                             f'{", ".join(names)}')
        names = list(groups)
    one_hot = series.get('ratio/one_hot_layers')
    radius = series.get('ssn_radius')
    extra = 1 if (one_hot or radius) else 0
    figure = _new_figure(10.0, 1.9 * (len(names) + extra) + 0.8)
    _check_out(figure, out)
    axes = figure.subplots(len(names) + extra, 2, squeeze=False)
    for row, group in enumerate(names):
        for col, statistic in enumerate(_STATISTICS):
            ax = axes[row][col]
            for normalizer in NAMES:
                points = found[group].get((statistic, normalizer))
                if points:
                    ax.plot(
                        *zip(*points),
                        color=COLORS.get(normalizer, _OTHER_COLOR),
                        label=normalizer,
                        linewidth=1.2)
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f'{group}: {statistic} ratios', fontsize=9)
            ax.tick_params(labelsize=7)
    if extra:
        ax = axes[-1][0]
        if one_hot:
            ax.plot(*zip(*one_hot), color='k', label='one-hot SSN layers')
            ax.set_ylabel('one-hot layers', fontsize=8)
        if radius:
            twin = ax.twinx() if one_hot else ax
            twin.plot(
                *zip(*radius), color='tab:red', linestyle='--', label='radius')
            twin.set_ylabel('radius', fontsize=8)
        ax.set_title('SSN', fontsize=9)
        ax.tick_params(labelsize=7)
        if one_hot and radius:
            twin.tick_params(labelsize=7)
        axes[-1][1].set_axis_off()
    for ax in axes[-1]:
        ax.set_xlabel('step', fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(
        handles, labels, loc='upper center', ncol=3, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    _save(figure, out)
