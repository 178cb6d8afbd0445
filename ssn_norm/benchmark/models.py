"""Whole-model cases: one training step of an upstream model per norm."""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..ops.providers import PROVIDERS
from .timing import (Timing, clock_reader, peak_memory_bytes, resolve_device,
                     time_interleaved)

__all__ = [
    'MODEL_TASKS', 'ModelResult', 'ModelTask', 'benchmark_models',
    'build_model_case'
]


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


def build_model_case(task: str, norm: str, seed: int = 0, device: str = 'cpu'):
    """``(model, make_batch(size_offset))`` for one task and norm.

    The model lives on ``device`` (its data preprocessor moves each batch
    there).  No pretrained weights are loaded.  ``make_batch(k)`` returns a
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
    model.to(resolve_device(device)).train()
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
    #: the step at which the ``compiled`` provider ends its warm-up and
    #: compiles (s; once per process, in a long run)
    switch: Dict[str, float] = field(default_factory=dict)
    #: graphs compiled by Dynamo during the norm's steps (its kernels)
    graphs: Dict[str, int] = field(default_factory=dict)
    #: graphs compiled by one more step at a new input size
    new_size_graphs: Dict[str, int] = field(default_factory=dict)


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters
    return int(counters['stats']['unique_graphs'])


def benchmark_models(tasks: Sequence[str] = tuple(MODEL_TASKS),
                     norms: Sequence[str] = ('BN', 'GN', 'SN'),
                     repeats: int = 3,
                     memory: bool = False,
                     clock: str = 'wall',
                     log: Optional[Callable[[str], None]] = None,
                     device: str = 'cpu') -> List[ModelResult]:
    """One training step (forward, backward, SGD update) per norm.

    For each task every norm gets the same model (norm layers swapped,
    random initialisation, same seed) and the same synthetic batch; steps
    are interleaved across norms.  The learning rate is 0, so repeats see
    the same weights.  ``first_call`` of each timing is the first step of
    a fresh process (the ``compiled`` kernel provider still warming up:
    :data:`~ssn_norm.ops.providers.COMPILE_AFTER_NUMEL`); ``switch`` is the
    step that ends the warm-up and compiles; the steady-state timings
    follow it.  Models run on ``device``.
    """
    from mmengine.logging import MMLogger
    from mmengine.optim import OptimWrapper
    unknown = [t for t in tasks if t not in MODEL_TASKS]
    if unknown:
        raise ValueError(f'unknown tasks {unknown}; choose from '
                         f'{sorted(MODEL_TASKS)}')
    now = clock_reader(clock, resolve_device(device))
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
                model, make_batch = build_model_case(task, norm, device=device)
            finally:
                logger.setLevel(level)
            wrapper = OptimWrapper(
                torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9))
            batch = make_batch(0)
            batches[norm] = (model, wrapper, make_batch)

            def step(model=model, wrapper=wrapper, batch=batch):
                return model.train_step(batch, wrapper)

            cases[norm] = step
        # Each norm's first step alone, as in a fresh process: compiled
        # code forgotten, the compiled provider's warm-up restarted.  Then
        # the step that ends the warm-up and compiles (from the on-disk
        # cache of earlier processes, if any): what a long run pays once.
        first = {}
        for norm, fn in cases.items():
            torch._dynamo.reset()
            PROVIDERS['compiled'].restart_warm_up()
            count = _compiled_graphs()
            start = now()
            fn()
            first[norm] = now() - start
            if norm in ('SN', 'SSN'):
                PROVIDERS['compiled'].end_warm_up()
                start = now()
                fn()
                result.switch[norm] = now() - start
            result.graphs[norm] = _compiled_graphs() - count
        if log:
            log(f'{task}: timing {", ".join(norms)}')
        steady = time_interleaved(
            cases,
            repeats=repeats,
            min_sample_s=0.0,
            warmup=1,
            clock=clock,
            device=device)
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
                result.peak[norm] = peak_memory_bytes(cases[norm], device)
        results.append(result)
    return results
