"""Decision rules, tables and plots of the claims preset.

The claims preset (:mod:`ssn_norm.claims`, ``tools/run_suite.py --preset
claims``) tests three claims of the SN paper at small scale.  The rules
that turn its numbers into a verdict are fixed here, in code, before any
run of it was made, and are not tuned to what the runs show:

* Every comparison is a difference of means over seeds with its standard
  error (Welch: ``sqrt(s_a²/n_a + s_b²/n_b)``; one-sample ``s/sqrt(n)``).
* A comparison **holds** when the difference lies more than
  :data:`THRESHOLD` (2) standard errors from zero in the claimed
  direction, is **contradicted** when it lies that far in the opposite
  direction, and is **not shown** otherwise, or when any mean it uses
  rests on fewer than :data:`MIN_SEEDS` (3) seeds or on a missing or
  non-finite value.
* A claim made of several comparisons holds when all of them hold, is
  contradicted when any is contradicted, and is not shown otherwise
  (:func:`combine`).

Numbers are printed as ``mean ± s (n)``: the sample standard deviation
over ``n`` seeds.
"""
import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

HOLDS = 'holds'
NOT_SHOWN = 'not shown'
CONTRADICTED = 'contradicted'
VERDICTS = (HOLDS, NOT_SHOWN, CONTRADICTED)
#: Fewest seeds behind a mean for a verdict other than "not shown".
MIN_SEEDS = 3
#: Standard errors a difference must clear, in either direction.
THRESHOLD = 2.0
#: The normalisers whose shares the ratio claims compare.
SHARES = ('IN', 'LN', 'BN')


@dataclass(frozen=True)
class Summary:
    """Values over seeds: mean, sample standard deviation, count."""
    values: Tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> 'Summary':
        return cls(tuple(float(v) for v in values))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def finite(self) -> bool:
        return self.n > 0 and all(math.isfinite(v) for v in self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n if self.n else math.nan

    @property
    def sd(self) -> float:
        """Sample standard deviation (n − 1); NaN below two values."""
        if self.n < 2:
            return math.nan
        mean = self.mean
        return math.sqrt(
            sum((v - mean)**2 for v in self.values) / (self.n - 1))

    @property
    def se(self) -> float:
        """Standard error of the mean; NaN below two values."""
        return self.sd / math.sqrt(self.n) if self.n >= 2 else math.nan

    def format(self, digits: int = 1) -> str:
        """``mean ± s (n)``; ``mean (1)`` for a single value; ``–``
        without values."""
        if self.n == 0:
            return '–'
        if self.n == 1:
            return f'{self.mean:.{digits}f} (1)'
        return f'{self.mean:.{digits}f} ± {self.sd:.{digits}f} ({self.n})'


@dataclass(frozen=True)
class Test:
    """One directional comparison and its verdict.

    Attributes:
        name: what is claimed, e.g. ``BN degrades``.
        estimate: the difference, signed so that the claim predicts
            ``expected`` times a positive number.
        se: its standard error.
        counts: the seeds behind each mean it uses.
        expected: +1 when the claim predicts a positive estimate, −1 for
            a negative one.
        verdict: one of :data:`VERDICTS`.
        reason: why, in words.
    """
    name: str
    estimate: float
    se: float
    counts: Tuple[int, ...]
    expected: int
    verdict: str
    reason: str

    def format(self, digits: int = 1) -> str:
        """``estimate ± SE``."""
        if not math.isfinite(self.estimate):
            return '–'
        se = '–' if not math.isfinite(self.se) else f'{self.se:.{digits}f}'
        return f'{self.estimate:+.{digits}f} ± {se}'


def directional(name: str,
                estimate: float,
                se: float,
                counts: Sequence[int],
                expected: int = 1) -> Test:
    """The verdict on ``estimate`` (± ``se``) against the claimed sign.

    Holds when ``expected * estimate > THRESHOLD * se``, contradicted when
    ``expected * estimate < -THRESHOLD * se``, else not shown; not shown
    as well when ``min(counts) < MIN_SEEDS`` or a number is not finite.
    """
    if expected not in (1, -1):
        raise ValueError(f'expected must be +1 or -1, got {expected!r}')
    counts = tuple(int(c) for c in counts)
    direction = 'above' if expected > 0 else 'below'
    if not counts or min(counts) < MIN_SEEDS:
        return Test(name, estimate, se, counts, expected, NOT_SHOWN,
                    f'fewer than {MIN_SEEDS} seeds (n = {counts})')
    if not (math.isfinite(estimate) and math.isfinite(se)):
        return Test(name, estimate, se, counts, expected, NOT_SHOWN,
                    'a missing or non-finite value')
    signed = expected * estimate
    margin = f'{THRESHOLD:g} SE'
    if signed > THRESHOLD * se:
        return Test(name, estimate, se, counts, expected, HOLDS,
                    f'more than {margin} {direction} zero')
    if signed < -THRESHOLD * se:
        opposite = 'below' if expected > 0 else 'above'
        return Test(name, estimate, se, counts, expected, CONTRADICTED,
                    f'more than {margin} {opposite} zero')
    return Test(name, estimate, se, counts, expected, NOT_SHOWN,
                f'within {margin} of zero')


def difference(a: Summary, b: Summary) -> Tuple[float, float]:
    """``mean(a) − mean(b)`` and its Welch standard error."""
    return a.mean - b.mean, math.sqrt(a.se**2 + b.se**2)


def compare(name: str, a: Summary, b: Summary, expected: int = 1) -> Test:
    """Directional test of ``mean(a) − mean(b)``."""
    estimate, se = difference(a, b)
    return directional(name, estimate, se, (a.n, b.n), expected)


def one_sample(name: str, values: Summary, expected: int = 1) -> Test:
    """Directional test of ``mean(values)`` (per-seed differences)."""
    return directional(name, values.mean, values.se, (values.n, ), expected)


def combine(tests: Sequence[Test]) -> str:
    """A claim's verdict from its comparisons: contradicted if any is,
    holds if all hold, else not shown (also with no comparison)."""
    verdicts = [test.verdict for test in tests]
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    return NOT_SHOWN


@dataclass(frozen=True)
class ClaimResult:
    """A claim's comparisons and verdict (``verdict == combine(tests)``)."""
    tests: Tuple[Test, ...]

    @property
    def verdict(self) -> str:
        return combine(self.tests)


# Claim 1 ---------------------------------------------------------------


def claim1(metric: Mapping[Tuple[str, str], Summary],
           small: str,
           large: str,
           baseline: str = 'BN') -> ClaimResult:
    """BN degrades as the images per GPU shrink, while the others hold.

    ``metric[(normaliser, setting)]`` holds the metric over seeds (higher
    is better).  A normaliser's drop is ``metric(large) − metric(small)``.
    The claim's comparisons:

    * ``BN degrades``: BN's drop is positive;
    * ``BN degrades more than X`` for every other normaliser X: BN's drop
      minus X's drop is positive (its SE combines the four means' SEs).
    """
    norms = sorted({norm for norm, _ in metric}, key=_norm_order)
    if baseline not in norms:
        raise ValueError(f'claim 1 needs {baseline} runs, got {norms}')

    def drop(norm):
        return difference(metric[(norm, large)], metric[(norm, small)])

    def counts(norm):
        return (metric[(norm, large)].n, metric[(norm, small)].n)

    base, base_se = drop(baseline)
    tests = [
        directional(f'{baseline} degrades', base, base_se, counts(baseline))
    ]
    for norm in norms:
        if norm == baseline:
            continue
        other, other_se = drop(norm)
        tests.append(
            directional(f'{baseline} degrades more than {norm}', base - other,
                        math.sqrt(base_se**2 + other_se**2),
                        counts(baseline) + counts(norm)))
    return ClaimResult(tuple(tests))


# Ratio claims ----------------------------------------------------------


def layer_share(layers: Sequence, normalizer: str) -> float:
    """Share of ``normalizer`` in ``layers`` (LayerRatios): the mean over
    layers of the average of its mean and variance ratios."""
    if not layers:
        return math.nan
    return sum(
        (lay.share('mean', normalizer) + lay.share('var', normalizer)) / 2
        for lay in layers) / len(layers)


def claim2(shares: Mapping[str, Mapping[str, Summary]], small: str,
           large: str) -> ClaimResult:
    """SN lowers its BN ratio and raises its LN ratio at the smaller batch.

    ``shares[setting][normaliser]``: the layer-averaged share over seeds
    (:func:`layer_share` per seed).
    """
    return ClaimResult((
        compare('BN share lower at the small batch', shares[small]['BN'],
                shares[large]['BN'], -1),
        compare('LN share higher at the small batch', shares[small]['LN'],
                shares[large]['LN'], 1),
    ))


def claim3(det_bn_gap: Summary, seg_in_minus_bn: Summary,
           seg_ln_minus_bn: Summary,
           task_shares: Mapping[str, Mapping[str, Summary]]) -> ClaimResult:
    """Different tasks and parts choose different normalisers.

    Args:
        det_bn_gap: per seed, detection's BN share in the backbone and box
            head minus that in the FPN and mask head (claimed positive).
        seg_in_minus_bn: per seed, segmentation's IN share minus its BN
            share over all layers (claimed positive); likewise
            ``seg_ln_minus_bn`` for LN.
        task_shares: ``task_shares[task][normaliser]`` over seeds (whole
            network).  The comparison ``tasks choose differently`` holds
            when some pair of tasks differs in some normaliser's share by
            more than the threshold (either sign); it is never
            contradicted: equal shares cannot be shown this way.
    """
    tests = [
        one_sample(
            'detection: BN share higher in backbone + box head '
            'than in FPN + mask head', det_bn_gap),
        one_sample('segmentation: IN share above BN share', seg_in_minus_bn),
        one_sample('segmentation: LN share above BN share', seg_ln_minus_bn),
        tasks_differ(task_shares),
    ]
    return ClaimResult(tuple(tests))


def tasks_differ(task_shares: Mapping[str, Mapping[str, Summary]]) -> Test:
    """Whether some two tasks differ in some normaliser's share (see
    :func:`claim3`); the test reported is the largest difference in SEs."""
    tasks = list(task_shares)
    found: List[Tuple[float, Test]] = []
    for i, first in enumerate(tasks):
        for second in tasks[i + 1:]:
            for norm in SHARES:
                a, b = task_shares[first][norm], task_shares[second][norm]
                estimate, se = difference(a, b)
                sign = 1 if estimate >= 0 else -1
                test = directional(f'{first} vs {second}: {norm} share',
                                   estimate, se, (a.n, b.n), sign)
                if not math.isfinite(estimate):
                    score = -1.
                elif se > 0:
                    score = abs(estimate) / se
                else:
                    score = math.inf if estimate else 0.
                found.append((score, test))
    name = 'tasks choose differently'
    if not found:
        return Test(name, math.nan, math.nan, (), 1, NOT_SHOWN,
                    'fewer than two tasks')
    score, best = max(found, key=lambda item: item[0])
    if best.verdict == HOLDS:
        return Test(name, best.estimate, best.se, best.counts, best.expected,
                    HOLDS, f'{best.name} differs by '
                    f'{score:.1f} SE')
    reason = best.reason if best.reason.startswith('fewer') else \
        f'no share differs by more than {THRESHOLD:g} SE'
    return Test(name, best.estimate, best.se, best.counts, best.expected,
                NOT_SHOWN, reason)


# Tables ----------------------------------------------------------------

_NORM_ORDER = ('BN', 'GN', 'SN', 'SSN')


def _norm_order(norm: str) -> Tuple[int, str]:
    return (_NORM_ORDER.index(norm) if norm in _NORM_ORDER else 99, norm)


def tests_table(result: ClaimResult, digits: int = 1) -> List[str]:
    """Markdown rows: each comparison, its estimate ± SE and verdict,
    then the claim's verdict."""
    lines = [
        '| comparison | estimate ± SE | seeds | verdict |',
        '|---|---|---|---|',
    ]
    for test in result.tests:
        seeds = ', '.join(str(c) for c in test.counts) or '–'
        lines.append(f'| {test.name} | {test.format(digits)} | {seeds} | '
                     f'{test.verdict} ({test.reason}) |')
    lines.append(f'| **claim** | | | **{result.verdict}** |')
    return lines


def claim1_table(metric: Mapping[Tuple[str, str],
                                 Summary], settings: Sequence[Tuple[str, str]],
                 metric_name: str) -> List[str]:
    """Markdown rows: the metric per normaliser and setting, and each
    normaliser's drop.  ``settings``: ``(setting key, column title)``,
    large batch first."""
    norms = sorted({norm for norm, _ in metric}, key=_norm_order)
    head = ' | '.join(title for _, title in settings)
    lines = [
        f'| normaliser | {head} | drop ({metric_name}) |',
        '|---' * (len(settings) + 2) + '|',
    ]
    (large, _), (small, _) = settings[0], settings[-1]
    for norm in norms:
        cells = ' | '.join(metric[(norm, key)].format() for key, _ in settings)
        estimate, se = difference(metric[(norm, large)], metric[(norm, small)])
        drop = '–' if not math.isfinite(estimate) else (
            f'{estimate:+.1f}' + (f' ± {se:.1f}' if math.isfinite(se) else ''))
        lines.append(f'| {norm} | {cells} | {drop} |')
    return lines


def shares_table(rows: Sequence[Tuple[str, Mapping[str, Summary]]],
                 first: str = 'setting',
                 extra: Optional[Sequence[str]] = None) -> List[str]:
    """Markdown rows ``| label | IN | LN | BN |`` of shares over seeds
    (three decimals); ``extra`` adds a column of text per row."""
    more = ' | layers' if extra is not None else ''
    lines = [
        f'| {first}{more} | IN | LN | BN |',
        '|---' * (4 + (extra is not None)) + '|',
    ]
    for index, (label, shares) in enumerate(rows):
        cells = ' | '.join(shares[norm].format(3) for norm in SHARES)
        column = f' | {extra[index]}' if extra is not None else ''
        lines.append(f'| {label}{column} | {cells} |')
    return lines


# Plots -----------------------------------------------------------------


def plot_metric(metric: Mapping[Tuple[str, str], Summary],
                images: Mapping[str, int], metric_name: str, out: str) -> None:
    """The metric against images per GPU, one line per normaliser, error
    bars ± one sample standard deviation."""
    from .plot import COLORS
    figure, ax = _line_figure()
    colours = dict(COLORS, SN='#8172B3', SSN='#937860')
    norms = sorted({norm for norm, _ in metric}, key=_norm_order)
    keys = sorted(images, key=images.get)
    for offset, norm in enumerate(norms):
        # Normalisers side by side at each setting, so bars do not hide.
        shift = 1 + 0.04 * (offset - (len(norms) - 1) / 2)
        _series(ax, [(images[k] * shift, metric[(norm, k)]) for k in keys],
                colours.get(norm), norm)
    _finish(figure, ax, [images[k] for k in keys], metric_name, out)


def plot_shares(shares: Mapping[str, Mapping[str, Summary]],
                images: Mapping[str, int], out: str) -> None:
    """SN's IN, LN and BN shares against images per GPU, ± one sample
    standard deviation over seeds."""
    from .plot import COLORS
    figure, ax = _line_figure()
    keys = sorted(images, key=images.get)
    for norm in SHARES:
        _series(ax, [(images[k], shares[k][norm]) for k in keys], COLORS[norm],
                norm)
    ax.axhline(1 / 3, color='0.6', linewidth=0.8, linestyle=':')
    _finish(figure, ax, [images[k] for k in keys], 'SN ratio (layer mean)',
            out)


def _line_figure():
    from .plot import _new_figure
    figure = _new_figure(4.2, 3.2)
    return figure, figure.add_subplot(1, 1, 1)


def _series(ax, points: Sequence[Tuple[float, Summary]], colour: Optional[str],
            label: str) -> None:
    """Means ± sample standard deviations at ``x``; cells without a finite
    value are left out."""
    points = [(x, s) for x, s in points if s.finite]
    if points:
        ax.errorbar([x for x, _ in points], [s.mean for _, s in points],
                    yerr=[_zero_nan(s.sd) for _, s in points],
                    marker='o',
                    capsize=3,
                    color=colour,
                    label=label)


def _finish(figure, ax, images: Sequence[int], ylabel: str, out: str) -> None:
    from .plot import _save
    _images_axis(ax, images)
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    figure.tight_layout()
    _save(figure, out)


def plot_profiles(profiles: Sequence[Tuple[str,
                                           Sequence[Tuple[str,
                                                          Mapping[str,
                                                                  Summary]]]]],
                  out: str) -> None:
    """One panel per task: stacked IN/LN/BN shares per part."""
    from .plot import COLORS, _new_figure, _save
    figure = _new_figure(3.0 * max(1, len(profiles)) + 0.6, 3.2)
    for index, (task, parts) in enumerate(profiles):
        ax = figure.add_subplot(1, len(profiles), index + 1)
        bottom = [0.] * len(parts)
        for norm in SHARES:
            heights = [_zero_nan(shares[norm].mean) for _, shares in parts]
            ax.bar(
                range(len(parts)),
                heights,
                bottom=bottom,
                color=COLORS[norm],
                label=norm,
                width=0.8)
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set_xticks(range(len(parts)))
        ax.set_xticklabels([name for name, _ in parts],
                           rotation=30,
                           fontsize=7,
                           ha='right')
        ax.set_ylim(0, 1)
        ax.axhline(1 / 3, color='0.3', linewidth=0.6, linestyle=':')
        ax.axhline(2 / 3, color='0.3', linewidth=0.6, linestyle=':')
        ax.set_title(task, fontsize=9)
        if index == 0:
            ax.set_ylabel('SN ratio (mean over layers, seeds)')
            ax.legend(fontsize=7)
    figure.tight_layout()
    _save(figure, out)


def _images_axis(ax, values: Sequence[int]) -> None:
    ax.set_xscale('log', base=2)
    ax.set_xlim(min(values) / 1.5, max(values) * 1.5)
    ax.set_xticks(values)
    ax.set_xticklabels([str(v) for v in values])
    ax.set_xlabel('images per GPU (statistics batch)')


def _zero_nan(value: float) -> float:
    return 0. if not math.isfinite(value) else value


def shares_of(layers: Sequence) -> Dict[str, float]:
    """:func:`layer_share` of IN, LN and BN."""
    return {norm: layer_share(layers, norm) for norm in SHARES}
