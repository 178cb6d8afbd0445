"""Grows the SparsestMax radius of every SSN layer over training."""
import math
import numbers
from typing import Optional

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..layers.switchable_norm import UNFREEZE_LOGITS
from ..utils import sparse_switchable_norms


def _check_radius(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f'SparsestMaxRadiusHook: {name} must be a real '
                        f'number, got {value!r}')
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f'SparsestMaxRadiusHook: {name} must be a finite number >= 0 '
            '(0: sparsemax; >= 0.8165: every layer one-hot), got '
            f'{value!r}')
    return float(value)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f'SparsestMaxRadiusHook: {name} must be an int, got '
                        f'{value!r}')
    if value < minimum:
        raise ValueError(f'SparsestMaxRadiusHook: {name} must be >= '
                         f'{minimum}, got {value!r}')
    return int(value)


@HOOKS.register_module()
class SparsestMaxRadiusHook(Hook):
    """Sets ``radius`` of every SSN layer from the training progress.

    The radius grows linearly from ``start_radius`` at iteration ``begin`` to
    ``end_radius`` at iteration ``end`` (default: the run's ``max_iters``) and
    stays there; it is recomputed from the iteration before every training
    step, so resuming restores it exactly.  Every ``interval`` iterations it
    logs the radius (``train/ssn_radius``); the ratios, and how many SSN
    layers have frozen one-hot, are :class:`RatioLoggerHook`'s to log
    (``train/ratio/one_hot_layers``), so each is logged once.

    Fine-tuning frozen SSN weights (e.g. the released ImageNet checkpoint,
    every layer frozen): ``unfreeze_at_start=True`` calls
    :meth:`~ssn_norm.SSN.unfreeze` on every SSN layer in ``before_train``
    (after ``load_from`` is loaded) of a run that starts at iteration 0, so
    the ratios learn again under the schedule, which starts over at
    ``start_radius``.  A resumed run (iteration > 0) is not unfrozen again:
    its checkpoint holds the state reached since.

    Args:
        start_radius: radius at ``begin``; finite, ≥ 0.
        end_radius: radius at ``end``; finite, ≥ 0; ≥ 0.8165 makes every
            layer one-hot.
        begin: first iteration of the ramp (≥ 0).
        end: last iteration of the ramp (> ``begin``); None means
            ``runner.max_iters``.
        interval: logging interval in iterations (≥ 1).
        unfreeze_at_start: unfreeze every SSN layer before training.
        unfreeze_logits: starting logits of the unfrozen rows, see
            :meth:`~ssn_norm.SSN.unfreeze` (``'uniform'`` or ``'soften'``).
    """

    priority = 'NORMAL'

    def __init__(self,
                 start_radius: float = 0.0,
                 end_radius: float = 1.0,
                 begin: int = 0,
                 end: Optional[int] = None,
                 interval: int = 50,
                 unfreeze_at_start: bool = False,
                 unfreeze_logits: str = 'uniform') -> None:
        self.start_radius = _check_radius('start_radius', start_radius)
        self.end_radius = _check_radius('end_radius', end_radius)
        self.begin = _check_int('begin', begin, 0)
        if end is not None:
            end = _check_int('end', end, 0)
            if end <= self.begin:
                raise ValueError(f'SparsestMaxRadiusHook: end ({end}) must '
                                 f'be greater than begin ({self.begin})')
        self.end = end
        self.interval = _check_int('interval', interval, 1)
        if not isinstance(unfreeze_at_start, bool):
            raise TypeError('SparsestMaxRadiusHook: unfreeze_at_start must '
                            f'be True or False, got {unfreeze_at_start!r}')
        if unfreeze_logits not in UNFREEZE_LOGITS:
            raise ValueError('SparsestMaxRadiusHook: unfreeze_logits must be '
                             f'one of {UNFREEZE_LOGITS}, got '
                             f'{unfreeze_logits!r}')
        self.unfreeze_at_start = unfreeze_at_start
        self.unfreeze_logits = unfreeze_logits

    def radius_at(self, iteration: int, max_iters: int) -> float:
        """Radius for the (0-based) ``iteration`` of a ``max_iters`` run."""
        end = self.end if self.end is not None else max_iters
        progress = (iteration - self.begin) / max(end - self.begin, 1)
        progress = min(max(progress, 0.0), 1.0)
        return self.start_radius + (self.end_radius -
                                    self.start_radius) * progress

    def before_train(self, runner) -> None:
        layers = [layer for _, layer in sparse_switchable_norms(runner.model)]
        if not layers:
            runner.logger.warning(
                'SparsestMaxRadiusHook: the model has no SSN layer; the hook '
                'does nothing.')
            return
        if not self.unfreeze_at_start:
            return
        if runner.iter > 0:
            runner.logger.info(
                f'SparsestMaxRadiusHook: resumed at iteration {runner.iter}; '
                'unfreeze_at_start applies to a run starting at iteration 0 '
                'only, the checkpoint holds the ratios learned since.')
            return
        frozen = int(torch.stack([layer.frozen.any()
                                  for layer in layers]).sum())
        radius = self.radius_at(0, runner.max_iters)
        for layer in layers:
            layer.unfreeze(logits=self.unfreeze_logits, radius=radius)
        runner.logger.info(
            f'SparsestMaxRadiusHook: unfroze {frozen} of {len(layers)} SSN '
            f'layers (logits {self.unfreeze_logits!r}, radius {radius:g}).')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None):
        radius = self.radius_at(runner.iter, runner.max_iters)
        for _, layer in sparse_switchable_norms(runner.model):
            layer.set_radius(radius)
        if self.every_n_train_iters(runner, self.interval):
            runner.message_hub.update_scalar('train/ssn_radius', radius)
