"""Markdown tables of benchmark results."""
from typing import Optional, Sequence

from .layers import LAYER_NORMS, LayerResult
from .models import MODEL_TASKS, ModelResult
from .timing import Timing

__all__ = ['layer_table', 'model_table']


def _shape(shape: Sequence[int]) -> str:
    return '×'.join(str(s) for s in shape)


def _ms(timing: Optional[Timing]) -> str:
    return '–' if timing is None else f'{timing.median * 1e3:.2f}'


def _ratio(num: Optional[Timing], den: Optional[Timing]) -> str:
    if num is None or den is None or den.median <= 0:
        return '–'
    return f'{num.median / den.median:.2f}'


def _row(cells: Sequence[str]) -> str:
    return '| ' + ' | '.join(cells) + ' |'


def layer_table(results: Sequence[LayerResult]) -> str:
    """Markdown tables: training, eval, frozen-SSN eval (ms per call)."""
    norms = [n for n in LAYER_NORMS if results and n in results[0].train]
    lines = [
        '**Training, forward + backward** (ms; ratios of medians; '
        'peak = peak memory of the step)', ''
    ]
    head = ['layer', 'shape'] + norms + ['SN/BN', 'SSN/BN', 'peak SN/BN']
    lines += [_row(head), _row(['---'] * len(head))]
    for res in results:
        peak = res.peak.get('SN'), res.peak.get('BN')
        peak_ratio = (f'{peak[0] / peak[1]:.2f}' if all(
            p for p in peak) else '–')
        lines.append(
            _row(
                [f'{res.case.family} {res.case.name}',
                 _shape(res.case.shape)] +
                [_ms(res.train.get(n)) for n in norms] + [
                    _ratio(res.train.get('SN'), res.train.get('BN')),
                    _ratio(res.train.get('SSN'), res.train.get('BN')),
                    peak_ratio
                ]))
    lines += ['', '**Eval** (ms)', '']
    head = ['layer', 'shape'] + norms + ['SN/IN', 'SSN/IN']
    lines += [_row(head), _row(['---'] * len(head))]
    for res in results:
        lines.append(
            _row(
                [f'{res.case.family} {res.case.name}',
                 _shape(res.case.shape)] +
                [_ms(res.eval.get(n)) for n in norms] + [
                    _ratio(res.eval.get('SN'), res.eval.get('IN')),
                    _ratio(res.eval.get('SSN'), res.eval.get('IN'))
                ]))
    if any(res.frozen for res in results):
        lines += [
            '', '**Eval, SSN frozen one-hot** on the normaliser in brackets, '
            'next to that normaliser (ms)', ''
        ]
        head = ['layer', 'shape']
        for choice in ('BN', 'IN', 'LN'):
            head += [choice, f'SSN[{choice}]', 'ratio']
        lines += [_row(head), _row(['---'] * len(head))]
        for res in results:
            cells = [
                f'{res.case.family} {res.case.name}',
                _shape(res.case.shape)
            ]
            for choice in ('BN', 'IN', 'LN'):
                plain, ssn = res.frozen.get(choice), res.frozen.get(
                    f'SSN[{choice}]')
                cells += [_ms(plain), _ms(ssn), _ratio(ssn, plain)]
            lines.append(_row(cells))
    return '\n'.join(lines)


def model_table(results: Sequence[ModelResult]) -> str:
    """Markdown table of training-step times and ratios."""
    lines = [
        '**One training step** (forward, backward, SGD update; s per step, '
        'median; first = first step, including any compilation; graphs = '
        'compiled kernels (first step / one more step at a new input size))',
        ''
    ]
    head = [
        'model', 'norm', 'step (s)', 'first (s)', 'vs GN', 'vs BN',
        'peak (MiB)', 'graphs'
    ]
    lines += [_row(head), _row(['---'] * len(head))]
    for res in results:
        spec = MODEL_TASKS[res.task]
        for norm, timing in res.steps.items():
            peak = res.peak.get(norm)
            lines.append(
                _row([
                    f'{spec.name}, {_shape(spec.batch)}', norm,
                    f'{timing.median:.2f}', f'{timing.first_call:.1f}',
                    _ratio(timing, res.steps.get('GN')),
                    _ratio(timing, res.steps.get('BN')),
                    '–' if peak is None else f'{peak / 2**20:.0f}',
                    f'{res.graphs.get(norm, 0)} / '
                    f'{res.new_size_graphs.get(norm, 0)}'
                ]))
    return '\n'.join(lines)
