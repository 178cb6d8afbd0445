"""Cost of SN / SSN next to BN, GN, IN and LN: layers and whole models.

The library behind ``tools/benchmark_norms.py``.  Timings are interleaved:
each repeat runs every candidate once, in rotating order, and the median
per-call time is reported, so slow drift of a shared machine (other jobs,
frequency scaling) hits all candidates alike and ratios stay meaningful
where absolute times do not.  Peak memory comes from the PyTorch profiler's
allocator events (every allocation, including those of compiled code).

Written for the CPU: inputs are CPU tensors and calls are timed without
device synchronisation.
"""
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .layers import SN, SSN

__all__ = [
    'CLOCKS', 'LAYER_SHAPES', 'MODEL_TASKS', 'NORMS', 'LayerCase',
    'LayerResult', 'ModelResult', 'ModelTask', 'Timing', 'benchmark_layers',
    'benchmark_models', 'build_model_case', 'build_norm', 'frozen_ssn',
    'layer_table', 'model_table', 'peak_memory_bytes', 'time_interleaved'
]

#: Normalisers compared, in table order.  LN is ``GroupNorm(1, C)`` (per
#: sample over C and space, per-channel affine: the LN inside SN); IN has an
#: affine transform; GN uses 32 groups.
NORMS = ('BN', 'GN', 'IN', 'LN', 'SN', 'SSN')


# ------------------------------------------------------------- measurement
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


def time_interleaved(cases: Mapping[str, Callable[[], object]],
                     repeats: int = 7,
                     min_sample_s: float = 0.02,
                     warmup: int = 2,
                     clock: str = 'wall') -> Dict[str, Timing]:
    """Time ``cases`` side by side; per call seconds for each.

    Each case is called ``warmup`` times first (the first call is timed on
    its own and reported as ``first_call``).  A sample of a case is as many
    back-to-back calls as fill ``min_sample_s`` (at least one).  Each of the
    ``repeats`` rounds takes one sample of every case, starting at a
    different case each round.  ``clock`` is a key of :data:`CLOCKS`.
    """
    if repeats < 1 or warmup < 1:
        raise ValueError(f'repeats and warmup must be >= 1, got {repeats} '
                         f'and {warmup}')
    if clock not in CLOCKS:
        raise ValueError(f'unknown clock {clock!r}; choose from '
                         f'{sorted(CLOCKS)}')
    now = CLOCKS[clock]
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


def peak_memory_bytes(fn: Callable[[], object]) -> Optional[int]:
    """Peak of bytes allocated while ``fn()`` runs, above the start level.

    Counts every allocation the PyTorch allocator reports to the profiler
    (eager ops, autograd buffers, compiled kernels' buffers); tensors that
    exist before the call are not counted.  None if this PyTorch build's
    profiler does not expose allocation events.
    """
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


# ------------------------------------------------------------ layer cases
def build_norm(name: str, channels: int) -> nn.Module:
    """A normaliser of :data:`NORMS` for (N, ``channels``, *) input."""
    if name == 'BN':
        return _AnyRankBatchNorm(channels)
    if name == 'GN':
        return nn.GroupNorm(min(32, channels), channels)
    if name == 'IN':
        return _AnyRankInstanceNorm(channels)
    if name == 'LN':
        return nn.GroupNorm(1, channels)
    if name == 'SN':
        return SN(channels)
    if name == 'SSN':
        return SSN(channels)
    raise ValueError(f'unknown norm {name!r}; choose from {NORMS}')


class _AnyRankBatchNorm(nn.BatchNorm2d):
    """torch's BatchNorm for (N, C, *) input of any rank (same kernels)."""

    def _check_input_dim(self, input: Tensor) -> None:
        pass


class _AnyRankInstanceNorm(nn.Module):
    """torch's affine InstanceNorm for (N, C, *) input of any rank."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.instance_norm(
            x, weight=self.weight, bias=self.bias, eps=self.eps)


def frozen_ssn(channels: int, choice: str) -> SSN:
    """An SSN layer in eval whose ratios are frozen one-hot on ``choice``.

    ``choice`` is 'IN', 'LN' or 'BN' for both mean and variance; running
    statistics are randomised so that BN is not an identity.
    """
    index = ('IN', 'LN', 'BN').index(choice)
    layer = SSN(channels)
    with torch.no_grad():
        hot = nn.functional.one_hot(torch.tensor(index), 3).float()
        layer.mean_weight.copy_(hot)
        layer.var_weight.copy_(hot)
        layer.mean_fixed.fill_(1)
        layer.var_fixed.fill_(1)
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2.0)
    return layer.eval()


@dataclass(frozen=True)
class LayerCase:
    """One input shape of a benchmark family."""

    family: str  # 'ResNet-50', 'FPN', 'I3D'
    name: str  # e.g. 'res2 (stage 1)'
    shape: Tuple[int, ...]


#: Default shapes.  ResNet-50 stages at batch 8, 224² (res2 also with the
#: 64 channels of its 1×1-reduced convs); FPN levels at batch 2, 800×1344
#: (the detection training size); I3D R50 stages at batch 2 for a 32×224²
#: clip (T = 8 after the temporal stride of the stem), plus the 64-channel
#: 4×64×8×28×28 map.  The ``*`` rows are the sizes quoted in issue 8.
LAYER_SHAPES = (
    LayerCase('ResNet-50', 'res2 64-ch*', (8, 64, 56, 56)),
    LayerCase('ResNet-50', 'res2', (8, 256, 56, 56)),
    LayerCase('ResNet-50', 'res3', (8, 512, 28, 28)),
    LayerCase('ResNet-50', 'res4', (8, 1024, 14, 14)),
    LayerCase('ResNet-50', 'res5', (8, 2048, 7, 7)),
    LayerCase('FPN', 'P2*', (2, 256, 200, 336)),
    LayerCase('FPN', 'P3', (2, 256, 100, 168)),
    LayerCase('FPN', 'P5', (2, 256, 25, 42)),
    LayerCase('I3D', 'res2 64-ch*', (4, 64, 8, 28, 28)),
    LayerCase('I3D', 'res2', (2, 256, 8, 56, 56)),
    LayerCase('I3D', 'res4', (2, 1024, 8, 14, 14)),
    LayerCase('I3D', 'res5', (2, 2048, 8, 7, 7)),
)


@dataclass
class LayerResult:
    """Timings (s per call) and peak memory (bytes) of one shape."""

    case: LayerCase
    train: Dict[str, Timing] = field(default_factory=dict)
    eval: Dict[str, Timing] = field(default_factory=dict)
    frozen: Dict[str, Timing] = field(default_factory=dict)
    peak: Dict[str, Optional[int]] = field(default_factory=dict)


def _train_step(layer: nn.Module, x: Tensor,
                grad: Tensor) -> Callable[[], object]:
    inputs = [x] + [p for p in layer.parameters() if p.requires_grad]

    def step():
        # autograd.grad: no .grad accumulation pass to skew the timing.
        return torch.autograd.grad(layer(x), inputs, grad)

    return step


def _eval_step(layer: nn.Module, x: Tensor) -> Callable[[], object]:

    def step():
        with torch.no_grad():
            return layer(x)

    return step


def benchmark_layers(
        cases: Sequence[LayerCase] = LAYER_SHAPES,
        norms: Sequence[str] = NORMS,
        repeats: int = 7,
        memory: bool = True,
        frozen: bool = True,
        clock: str = 'wall',
        log: Optional[Callable[[str], None]] = None) -> List[LayerResult]:
    """Training fwd+bwd, eval, frozen-SSN eval and peak memory per shape.

    Frozen rows compare an SSN frozen one-hot on IN/LN/BN (``SSN[IN]``…)
    with the plain normaliser it selected, in eval.
    """
    results = []
    for case in cases:
        if log:
            log(f'{case.family} {case.name} {case.shape}')
        channels = case.shape[1]
        x = torch.randn(case.shape).requires_grad_()
        grad = torch.randn(case.shape)
        layers = {name: build_norm(name, channels) for name in norms}
        result = LayerResult(case)
        result.train = time_interleaved(
            {
                name: _train_step(layer.train(), x, grad)
                for name, layer in layers.items()
            },
            repeats=repeats,
            clock=clock)
        if memory:
            for name, layer in layers.items():
                result.peak[name] = peak_memory_bytes(
                    _train_step(layer.train(), x, grad))
        result.eval = time_interleaved(
            {
                name: _eval_step(layer.eval(), x)
                for name, layer in layers.items()
            },
            repeats=repeats,
            clock=clock)
        if frozen:
            plain = {'IN': 'IN', 'LN': 'LN', 'BN': 'BN'}
            cases_ = {}
            for choice, norm in plain.items():
                cases_[norm] = _eval_step(
                    layers[norm].eval() if norm in layers else build_norm(
                        norm, channels).eval(), x)
                cases_[f'SSN[{choice}]'] = _eval_step(
                    frozen_ssn(channels, choice), x)
            result.frozen = time_interleaved(
                cases_, repeats=repeats, clock=clock)
        results.append(result)
    return results


# ----------------------------------------------------------------- tables
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
    norms = [n for n in NORMS if results and n in results[0].train]
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


# ---------------------------------------------------------- whole models
@dataclass(frozen=True)
class ModelTask:
    """An upstream model and a synthetic training batch for it."""

    name: str
    scope: str  # mmdet / mmseg / mmaction
    config: str  # upstream config, ``scope::path``
    batch: Tuple[int, ...]  # images: (N, H, W); clips: (N, T, H, W)


#: Mask R-CNN R50-FPN with norms in backbone, FPN and heads (upstream's
#: GN-all config, the model of the SN paper's detection table), DeepLabV3
#: R50-D8 and I3D R50, each with every norm layer swapped.
MODEL_TASKS = {
    'mask-rcnn':
    ModelTask('Mask R-CNN R50-FPN (norm in backbone, FPN, heads)', 'mmdet',
              'mmdet::gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py', (1, 320, 320)),
    'deeplabv3':
    ModelTask(
        'DeepLabV3 R50-D8', 'mmseg',
        'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-'
        '512x1024.py', (2, 256, 256)),
    'i3d':
    ModelTask(
        'I3D R50', 'mmaction',
        'mmaction::recognition/i3d/i3d_imagenet-pretrained-r50_8xb8-'
        '32x2x1-100e_kinetics400-rgb.py', (2, 8, 112, 112)),
}

_NORM_CFGS = {
    'BN': dict(type='BN', requires_grad=True),
    'GN': dict(type='GN', num_groups=32, requires_grad=True),
    'SN': dict(type='SN', requires_grad=True),
    'SSN': dict(type='SSN', requires_grad=True),
}
_NORM_TYPES = ('BN', 'BN2d', 'BN3d', 'SyncBN', 'GN', 'SN', 'SSN')


def _swap_norms(cfg, norm: str, video: bool) -> int:
    """Replace every norm config in ``cfg`` (in place); how many found."""
    new = dict(_NORM_CFGS[norm])
    if video and norm == 'BN':
        new['type'] = 'BN3d'
    count = 0

    def visit(node):
        nonlocal count
        if isinstance(node, dict):
            for key, value in list(node.items()):
                if (key == 'norm_cfg' and isinstance(value, dict)
                        and value.get('type') in _NORM_TYPES):
                    node[key] = type(value)(new)
                    count += 1
                else:
                    visit(value)
        elif isinstance(node, (list, tuple)):
            for item in node:
                visit(item)

    visit(cfg)
    return count


def build_model_case(task: str, norm: str, seed: int = 0):
    """``(model, make_batch(size_offset))`` for one task and norm.

    No pretrained weights are loaded.  ``make_batch(k)`` returns a
    synthetic training batch in the toolbox's data format, ``k`` × 32
    pixels larger than the task's default on each side.
    """
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import ssn_norm  # noqa: F401 - registers SN/SSN and applies compat
    spec = MODEL_TASKS[task]
    # ``scope::path`` resolves only as a base of another config.
    cfg = Config.fromstring(f'_base_ = {spec.config!r}\n', '.py')
    model_cfg = cfg.model
    if task == 'i3d':
        model_cfg.backbone.update(pretrained=None, pretrained2d=False)
        model_cfg.backbone.norm_cfg = dict(_NORM_CFGS['BN'])
    elif task == 'deeplabv3':
        model_cfg.pretrained = None
        model_cfg.data_preprocessor.size = None
        model_cfg.data_preprocessor.size_divisor = 32
    else:
        model_cfg.backbone.init_cfg = None
    found = _swap_norms(model_cfg, norm, video=task == 'i3d')
    if not found:
        raise RuntimeError(f'no norm_cfg found in {spec.config}')
    init_default_scope(spec.scope)
    torch.manual_seed(seed)
    if spec.scope == 'mmdet':
        import mmdet.models  # noqa: F401
        from mmdet.registry import MODELS
    elif spec.scope == 'mmseg':
        import mmseg.models  # noqa: F401
        from mmseg.registry import MODELS
    else:
        import mmaction.models  # noqa: F401
        from mmaction.registry import MODELS
    model = MODELS.build(model_cfg)
    model.init_weights()
    model.train()
    makers = {
        'mask-rcnn': _det_batch,
        'deeplabv3': _seg_batch,
        'i3d': _video_batch
    }

    def make_batch(size_offset: int = 0):
        gen = torch.Generator().manual_seed(seed)
        return makers[task](spec.batch, 32 * size_offset, gen)

    return model, make_batch


def _image(shape, gen) -> Tensor:
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)


def _det_batch(batch, offset, gen):
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    num, height, width = batch[0], batch[1] + offset, batch[2] + offset
    inputs, samples = [], []
    for _ in range(num):
        inputs.append(_image((3, height, width), gen))
        boxes = []
        masks = np.zeros((3, height, width), dtype=np.uint8)
        for k in range(3):
            x0, y0 = (torch.randint(0, width // 2, (1, ),
                                    generator=gen).item(),
                      torch.randint(0, height // 2, (1, ),
                                    generator=gen).item())
            x1, y1 = x0 + width // 3, y0 + height // 3
            boxes.append([x0, y0, x1, y1])
            masks[k, y0:y1, x0:x1] = 1
        sample = DetDataSample(
            metainfo=dict(
                img_shape=(height, width),
                ori_shape=(height, width),
                pad_shape=(height, width),
                scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor(boxes, dtype=torch.float32),
            labels=torch.randint(0, 80, (3, ), generator=gen),
            masks=BitmapMasks(masks, height, width))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _seg_batch(batch, offset, gen):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    num, height, width = batch[0], batch[1] + offset, batch[2] + offset
    inputs, samples = [], []
    for _ in range(num):
        inputs.append(_image((3, height, width), gen))
        sample = SegDataSample(
            metainfo=dict(
                img_shape=(height, width),
                ori_shape=(height, width),
                pad_shape=(height, width)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, 19, (1, height, width), generator=gen))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _video_batch(batch, offset, gen):
    from mmaction.structures import ActionDataSample
    num, frames, height, width = batch
    height, width = height + offset, width + offset
    inputs, samples = [], []
    for _ in range(num):
        inputs.append(_image((1, 3, frames, height, width), gen))
        sample = ActionDataSample()
        sample.set_gt_label(torch.randint(0, 400, (1, ), generator=gen))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@dataclass
class ModelResult:
    """One task: per norm, step timings, peak memory, compiled graphs."""

    task: str
    steps: Dict[str, Timing] = field(default_factory=dict)
    peak: Dict[str, Optional[int]] = field(default_factory=dict)
    #: graphs compiled by Dynamo during the norm's steps (its kernels)
    graphs: Dict[str, int] = field(default_factory=dict)
    #: graphs compiled by one more step at a new input size
    new_size_graphs: Dict[str, int] = field(default_factory=dict)


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters
    return int(counters['stats']['unique_graphs'])


def benchmark_models(
        tasks: Sequence[str] = tuple(MODEL_TASKS),
        norms: Sequence[str] = ('BN', 'GN', 'SN'),
        repeats: int = 3,
        memory: bool = False,
        clock: str = 'wall',
        log: Optional[Callable[[str], None]] = None) -> List[ModelResult]:
    """One training step (forward, backward, SGD update) per norm.

    For each task every norm gets the same model (norm layers swapped,
    random initialisation, same seed) and the same synthetic batch; steps
    are interleaved across norms.  The learning rate is 0, so repeats see
    the same weights.  ``first_call`` of each timing is the first step,
    with any compilation of the norm's kernels.
    """
    from mmengine.logging import MMLogger
    from mmengine.optim import OptimWrapper
    unknown = [t for t in tasks if t not in MODEL_TASKS]
    if unknown:
        raise ValueError(f'unknown tasks {unknown}; choose from '
                         f'{sorted(MODEL_TASKS)}')
    logger = MMLogger.get_current_instance()
    results = []
    for task in tasks:
        result = ModelResult(task)
        cases, batches = {}, {}
        for norm in norms:
            if log:
                log(f'{task}: building with {norm}')
            level = logger.level
            logger.setLevel('WARNING')  # init_weights logs every tensor
            try:
                model, make_batch = build_model_case(task, norm)
            finally:
                logger.setLevel(level)
            wrapper = OptimWrapper(
                torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9))
            batch = make_batch(0)
            batches[norm] = (model, wrapper, make_batch)

            def step(model=model, wrapper=wrapper, batch=batch):
                return model.train_step(batch, wrapper)

            cases[norm] = step
        # Each norm's first step alone, after forgetting compiled code, so
        # that it includes the compilation (from the on-disk cache of
        # earlier processes, if any) of the kernels it needs.
        first = {}
        for norm, fn in cases.items():
            torch._dynamo.reset()
            count = _compiled_graphs()
            start = CLOCKS[clock]()
            fn()
            first[norm] = CLOCKS[clock]() - start
            result.graphs[norm] = _compiled_graphs() - count
        if log:
            log(f'{task}: timing {", ".join(norms)}')
        steady = time_interleaved(
            cases, repeats=repeats, min_sample_s=0.0, warmup=1, clock=clock)
        for norm in norms:
            timing = steady[norm]
            timing.first_call = first[norm]
            result.steps[norm] = timing
            if norm in ('SN', 'SSN'):
                model, wrapper, make_batch = batches[norm]
                count = _compiled_graphs()
                model.train_step(make_batch(1), wrapper)
                result.new_size_graphs[norm] = _compiled_graphs() - count
            if memory:
                result.peak[norm] = peak_memory_bytes(cases[norm])
        results.append(result)
    return results


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
