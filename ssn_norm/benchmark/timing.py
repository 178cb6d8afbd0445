"""Timing and peak memory of callables: the measuring half of the benchmark.

Timings are interleaved: each repeat runs every candidate once, in rotating
order, and the median per-call time is reported, so slow drift of a shared
machine (other jobs, frequency scaling) hits all candidates alike and
ratios stay meaningful where absolute times do not.  On a CUDA device every
reading of the clock is preceded by a device synchronisation, so a call's
time includes its kernels.
"""
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional

import torch

__all__ = [
    'CLOCKS', 'Timing', 'clock_reader', 'peak_memory_bytes', 'resolve_device',
    'time_interleaved'
]


@dataclass
class Timing:
    """Seconds per call: median and quartiles over the repeats."""

    median: float
    low: float
    high: float
    repeats: int
    first_call: float  # the first call alone: includes any compilation


#: Clocks for :func:`time_interleaved`: wall time, or CPU time of this
#: process (all its threads), which time slices lost to other processes do
#: not inflate.  Use 'cpu' with one thread on a shared machine; it misses
#: work done in other processes (inductor compiles in worker processes, so
#: first-call times need 'wall').
CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}


def resolve_device(name: str) -> torch.device:
    """``name`` ('cpu', 'cuda', 'cuda:1') as a device that exists here.

    Raises:
        ValueError: ``name`` is not a device name, or names a CUDA device
            this machine does not have.
    """
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f'unknown device {name!r} ({error}); use cpu or '
                         'cuda[:index]') from None
    if device.type == 'cuda':
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(
                f'device {name!r} asked for, but this machine has '
                f'{count} CUDA device(s) (torch {torch.__version__}); '
                'use --device cpu')
    elif device.type != 'cpu':
        raise ValueError(f'device {name!r}: only cpu and cuda are '
                         'benchmarked')
    return device


def clock_reader(clock: str,
                 device: torch.device) -> Callable[[], float]:
    """The clock of ``clock``, synchronising ``device`` before each read
    (CUDA kernels run asynchronously)."""
    if clock not in CLOCKS:
        raise ValueError(f'unknown clock {clock!r}; choose from '
                         f'{sorted(CLOCKS)}')
    read = CLOCKS[clock]
    if device.type != 'cuda':
        return read
    if clock != 'wall':
        raise ValueError("clock 'cpu' cannot time CUDA kernels; use 'wall'")

    def read_synchronised() -> float:
        torch.cuda.synchronize(device)
        return read()

    return read_synchronised


def time_interleaved(cases: Mapping[str, Callable[[], object]],
                     repeats: int = 7,
                     min_sample_s: float = 0.02,
                     warmup: int = 2,
                     clock: str = 'wall',
                     device: str = 'cpu') -> Dict[str, Timing]:
    """Time ``cases`` side by side; per call seconds for each.

    Each case is called ``warmup`` times first (the first call is timed on
    its own and reported as ``first_call``).  A sample of a case is as many
    back-to-back calls as fill ``min_sample_s`` (at least one).  Each of the
    ``repeats`` rounds takes one sample of every case, starting at a
    different case each round.  ``clock`` is a key of :data:`CLOCKS`;
    on a CUDA ``device`` it is read after a synchronisation.
    """
    if repeats < 1 or warmup < 1:
        raise ValueError(f'repeats and warmup must be >= 1, got {repeats} '
                         f'and {warmup}')
    now = clock_reader(clock, resolve_device(device))
    names = list(cases)
    first, calls = {}, {}
    for name in names:
        fn = cases[name]
        start = now()
        fn()
        first[name] = now() - start
        start = now()
        for _ in range(warmup - 1):
            fn()
        single = ((now() - start) /
                  (warmup - 1) if warmup > 1 else first[name])
        calls[name] = max(1, math.ceil(min_sample_s / max(single, 1e-9)))
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for k in range(len(names)):
            name = names[(round_ + k) % len(names)]
            fn, num = cases[name], calls[name]
            start = now()
            for _ in range(num):
                fn()
            samples[name].append((now() - start) / num)
    result = {}
    for name in names:
        values = sorted(samples[name])
        quart = statistics.quantiles(
            values, n=4) if len(values) > 1 else [values[0]] * 3
        result[name] = Timing(
            median=statistics.median(values),
            low=quart[0],
            high=quart[2],
            repeats=repeats,
            first_call=first[name])
    return result


def peak_memory_bytes(fn: Callable[[], object],
                      device: str = 'cpu') -> Optional[int]:
    """Peak of bytes allocated while ``fn()`` runs, above the start level.

    On the CPU, counts every allocation the PyTorch allocator reports to
    the profiler (eager ops, autograd buffers, compiled kernels' buffers);
    on CUDA, the caching allocator's peak of allocated bytes.  Tensors that
    exist before the call are not counted.  None if this PyTorch build's
    profiler does not expose allocation events.
    """
    where = resolve_device(device)
    if where.type == 'cuda':
        torch.cuda.synchronize(where)
        start = torch.cuda.memory_allocated(where)
        torch.cuda.reset_peak_memory_stats(where)
        fn()
        torch.cuda.synchronize(where)
        return torch.cuda.max_memory_allocated(where) - start
    from torch.profiler import ProfilerActivity, profile
    try:
        from torch._C._profiler import _EventType
    except ImportError:  # pragma: no cover - older/newer private API
        return None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        fn()
    events = []
    stack = list(p.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            events.append((event.start_time_ns, event.extra_fields.alloc_size))
        stack.extend(event.children)
    if not events:
        return None
    current = peak = 0
    for _, size in sorted(events):
        current += size
        peak = max(peak, current)
    return peak
