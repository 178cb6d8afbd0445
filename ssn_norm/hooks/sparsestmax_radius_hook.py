"""Grows the SparsestMax radius of every SSN layer over training."""
from typing import Optional

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..utils import sparse_switchable_norms


@HOOKS.register_module()
class SparsestMaxRadiusHook(Hook):
    """Sets ``radius`` of every SSN layer from the training progress.

    The radius grows linearly from ``start_radius`` at iteration ``begin`` to
    ``end_radius`` at iteration ``end`` (default: the run's ``max_iters``) and
    stays there; it is recomputed from the iteration before every training
    step, so resuming restores it exactly.  Every ``interval`` iterations it
    logs the radius (``train/ssn_radius``) and the number of SSN layers whose
    mean and variance ratios are both one-hot (``train/ssn_one_hot_layers``,
    out of ``train/ssn_layers``).

    Args:
        start_radius: radius at ``begin``.
        end_radius: radius at ``end``; ≥ 0.8165 makes every layer one-hot.
        begin: first iteration of the ramp.
        end: last iteration of the ramp; None means ``runner.max_iters``.
        interval: logging interval in iterations.
    """

    priority = 'NORMAL'

    def __init__(self,
                 start_radius: float = 0.0,
                 end_radius: float = 1.0,
                 begin: int = 0,
                 end: Optional[int] = None,
                 interval: int = 50) -> None:
        if start_radius < 0 or end_radius < 0:
            raise ValueError('SparsestMaxRadiusHook: radii must be >= 0, got '
                             f'start_radius={start_radius}, '
                             f'end_radius={end_radius}')
        if end is not None and end <= begin:
            raise ValueError(f'SparsestMaxRadiusHook: end ({end}) must be '
                             f'greater than begin ({begin})')
        if interval < 1:
            raise ValueError(
                'SparsestMaxRadiusHook: interval must be >= 1, got '
                f'{interval}')
        self.start_radius = float(start_radius)
        self.end_radius = float(end_radius)
        self.begin = int(begin)
        self.end = end
        self.interval = int(interval)

    def radius_at(self, iteration: int, max_iters: int) -> float:
        """Radius for the (0-based) ``iteration`` of a ``max_iters`` run."""
        end = self.end if self.end is not None else max_iters
        progress = (iteration - self.begin) / max(end - self.begin, 1)
        progress = min(max(progress, 0.0), 1.0)
        return self.start_radius + (self.end_radius -
                                    self.start_radius) * progress

    def before_train(self, runner) -> None:
        if not any(True for _ in sparse_switchable_norms(runner.model)):
            runner.logger.warning(
                'SparsestMaxRadiusHook: the model has no SSN layer; the hook '
                'does nothing.')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None):
        radius = self.radius_at(runner.iter, runner.max_iters)
        for _, layer in sparse_switchable_norms(runner.model):
            layer.radius.fill_(radius)
        if self.every_n_train_iters(runner, self.interval):
            runner.message_hub.update_scalar('train/ssn_radius', radius)

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        if not self.every_n_train_iters(runner, self.interval):
            return
        layers = [layer for _, layer in sparse_switchable_norms(runner.model)]
        if not layers:
            return
        # One host read for all layers, only at the logging interval.
        one_hot = int(
            torch.stack([layer.frozen.all() for layer in layers]).sum())
        runner.message_hub.update_scalar('train/ssn_one_hot_layers', one_hot)
        runner.message_hub.update_scalar('train/ssn_layers', len(layers))
