"""Markdown tables of benchmark results."""
from typing import Dict, Optional, Sequence

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


def _timing_row(res: LayerResult,
                timings: Dict[str, Timing],
                norms: Sequence[str],
                reference: str,
                extra: Sequence[str] = ()) -> str:
    """One shape: the norms' times, SN and SSN over ``reference``, then
    ``extra`` cells."""
    return _row([f'{res.case.family} {res.case.name}',
                 _shape(res.case.shape)] +
                [_ms(timings.get(n)) for n in norms] + [
                    _ratio(timings.get(name), timings.get(reference))
                    for name in ('SN', 'SSN')
                ] + list(extra))


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
            _timing_row(res, res.train, norms, 'BN', extra=[peak_ratio]))
    lines += ['', '**Eval** (ms)', '']
    head = ['layer', 'shape'] + norms + ['SN/IN', 'SSN/IN']
    lines += [_row(head), _row(['---'] * len(head))]
    lines += [_timing_row(res, res.eval, norms, 'IN') for res in results]
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
        'median, compiled code for SN/SSN; first = the first step of a fresh '
        'process; switch = the step at which the compiled backend ends its '
        'warm-up and compiles, once in a long run; graphs = kernels '
        'compiled then / at one more step at a new input size)',
        ''
    ]
    head = [
        'model', 'norm', 'step (s)', 'first (s)', 'switch (s)', 'vs GN',
        'vs BN', 'peak (MiB)', 'graphs'
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
                    f'{res.switch[norm]:.1f}' if norm in res.switch else '–',
                    _ratio(timing, res.steps.get('GN')),
                    _ratio(timing, res.steps.get('BN')),
                    '–' if peak is None else f'{peak / 2**20:.0f}',
                    f'{res.graphs.get(norm, 0)} / '
                    f'{res.new_size_graphs.get(norm, 0)}'
                ]))
    return '\n'.join(lines)
