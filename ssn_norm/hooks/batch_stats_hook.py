"""Batch-average SN statistics before every validation (and test)."""
import copy
from typing import Optional, Sequence

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..batch_stats import compute_batch_stats, default_forward

_STAGES = ('val', 'test')


@HOOKS.register_module()
class BatchStatsHook(Hook):
    """Writes batch-average statistics into every SN layer before evaluation.

    Before each validation (and, with ``'test'`` in ``stages``, each test)
    the model is frozen and ``num_batches`` training batches are fed through
    it; the running statistics of every SN / SSN / SyncSN / SyncSSN layer
    become the exact sample-weighted average of the batch moments
    (:func:`~ssn_norm.batch_stats.compute_batch_stats`, all-reduced across
    processes).  The moving averages collected in training are overwritten,
    so checkpoints saved after a validation hold the batch averages of that
    validation.

    Args:
        num_batches: K, training batches per computation (per process).
        dataloader: config of the loader to draw them from; None copies the
            runner's ``train_dataloader`` config.  The hook builds its own
            loader once, so the training loop's iterator is never disturbed.
        mode: forward mode of mmengine models (``'loss'`` reproduces the
            training forward, e.g. sampled RoIs in detection heads;
            ``'tensor'`` skips the losses).
        stages: ``'val'`` and/or ``'test'``.
        progress: show an mmengine ProgressBar on rank 0.

    Note:
        Priority ``'LOW'``: it runs after hooks that prepare the model for
        evaluation (e.g. EMA weight swapping, running-statistics sync).
    """

    priority = 'LOW'

    def __init__(self,
                 num_batches: int = 200,
                 dataloader: Optional[dict] = None,
                 mode: str = 'loss',
                 stages: Sequence[str] = ('val', ),
                 progress: bool = True) -> None:
        if (not isinstance(num_batches, int) or isinstance(num_batches, bool)
                or num_batches < 1):
            raise ValueError('BatchStatsHook: num_batches must be a positive '
                             f'int, got {num_batches!r}')
        if mode not in ('loss', 'tensor', 'predict'):
            raise ValueError('BatchStatsHook: mode must be "loss", "tensor" '
                             f'or "predict", got {mode!r}')
        if isinstance(stages, str):
            stages = (stages, )
        bad = [s for s in stages if s not in _STAGES]
        if bad or not stages:
            raise ValueError(f'BatchStatsHook: stages must be a non-empty '
                             f'subset of {_STAGES}, got {tuple(stages)!r}')
        if dataloader is not None and not isinstance(dataloader, dict):
            raise TypeError('BatchStatsHook: dataloader must be a config '
                            f'dict or None, got {type(dataloader).__name__}')
        self.num_batches = num_batches
        self.dataloader_cfg = copy.deepcopy(dataloader)
        self.mode = mode
        self.stages = tuple(stages)
        self.progress = bool(progress)
        self._dataloader = None

    def _loader(self, runner):
        if self._dataloader is None:
            cfg = self.dataloader_cfg
            if cfg is None:
                cfg = runner.cfg.get('train_dataloader')
                if cfg is None:
                    raise RuntimeError(
                        'BatchStatsHook: the config has no train_dataloader;'
                        ' pass dataloader=dict(...) to the hook')
            self._dataloader = runner.build_dataloader(
                copy.deepcopy(cfg), seed=runner.seed)
        return self._dataloader

    def _update(self, runner) -> None:
        counts = compute_batch_stats(
            runner.model,
            self._loader(runner),
            self.num_batches,
            forward=default_forward(self.mode),
            progress=self.progress)
        samples = min(counts.values())
        runner.logger.info(
            f'BatchStatsHook: batch-average statistics of {len(counts)} SN '
            f'layers from {self.num_batches} batches per process (>= '
            f'{samples} samples per layer)')

    def before_val(self, runner) -> None:
        """Computes the statistics before validation."""
        if 'val' in self.stages:
            self._update(runner)

    def before_test(self, runner) -> None:
        """Computes the statistics before testing, if asked to."""
        if 'test' in self.stages:
            self._update(runner)
