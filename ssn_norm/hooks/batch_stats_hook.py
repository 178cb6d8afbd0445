"""Batch-average SN statistics for evaluation: the SN paper's test setting.

The SN paper (TPAMI, §3 "Inference") evaluates SN with batch averages:
"BN uses batch average after training without computing moving average";
the network is frozen, mini-batches of the training set are fed through it
and the BN means and variances of every SN layer are averaged.
:class:`BatchStatsHook` does this with
:func:`~ssn_norm.batch_stats.compute_batch_stats`, by default once, when
training ends, so that the last checkpoint, the final validation and
``tools/test.py`` on that checkpoint all use them.

A checkpoint whose statistics are batch averages says so in
``meta['batch_stats']`` (:func:`batch_stats_meta`), which also keeps the
moving averages they replaced, so the same checkpoint can still be tested
with moving averages (``statistics='moving_average'``).  Every evaluation
logs which statistics it used beside its metrics, under
:data:`~ssn_norm.batch_stats.STATISTICS_KEY`.
"""
import copy
from typing import Optional, Sequence

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..batch_stats import (META_KEY, STATISTICS_KEY, batch_stats_meta,
                           compute_batch_stats, default_forward,
                           moving_averages, restore_moving_averages)
from ..utils import switchable_norms

#: When the hook computes: once at the end of training (before the last
#: checkpoint is saved and before the final validation), and/or before
#: every validation or test.
STAGES = ('train_end', 'val', 'test')
#: What the model evaluates with.
STATISTICS = ('batch_average', 'moving_average')


def _finite_sampler(loader_cfg: dict) -> dict:
    """A copy of ``loader_cfg`` whose sampler makes one pass per
    iteration of the loader: ``InfiniteSampler`` (iteration-based configs)
    becomes ``DefaultSampler`` with the same shuffling and seed.

    ``InfiniteSampler`` hands every iteration of its loader one shared
    index generator, which closes when the first iteration is dropped: a
    second computation (two validations) would find no data.
    """
    cfg = copy.deepcopy(loader_cfg)
    sampler = cfg.get('sampler') or {}
    kind = sampler.get('type')
    if getattr(kind, '__name__', kind) == 'InfiniteSampler':
        cfg['sampler'] = dict(
            type='DefaultSampler',
            shuffle=sampler.get('shuffle', True),
            seed=sampler.get('seed'))
    return cfg


@HOOKS.register_module()
class BatchStatsHook(Hook):
    """Evaluates SN / SSN / SyncSN / SyncSSN models with batch averages.

    With ``statistics='batch_average'`` (default), at each stage of
    ``stages`` the model is frozen, up to ``num_batches`` training batches
    are fed through it, and the running statistics of every SN-family layer
    with a BN branch become the exact sample-weighted average of the batch
    moments (all-reduced across processes):

    * ``'train_end'`` (default): once, after the last training iteration,
      before the last checkpoint is saved and before the final validation
      (both iteration- and epoch-based loops).  The last checkpoint then
      holds the batch averages, and ``meta['batch_stats']`` says so and
      keeps the moving averages they replaced; ``tools/test.py`` on it
      tests with the batch averages.  Validations during training use the
      moving averages.
    * ``'val'`` / ``'test'``: before every validation / test.  Training
      continues from whatever the validation wrote.

    With ``statistics='moving_average'`` nothing is computed and a
    checkpoint that holds batch averages is loaded with the moving averages
    saved beside them instead.  In a config that has the hook as
    ``default_hooks.batch_stats``, that is one option away::

        --cfg-options default_hooks.batch_stats.statistics=moving_average

    Every validation and test logs :data:`STATISTICS_KEY` beside its
    metrics (the samples averaged over; 0 for moving averages).  A model
    without SN layers with BN statistics (e.g. SN of IN, LN and GN) has
    nothing to average: the hook says so once and does nothing else.

    Args:
        num_batches: K, batches per process; fewer when one pass over the
            data loader has fewer (then every batch of it once; the count
            used is logged and recorded).
        dataloader: config of the loader to draw them from; None copies the
            runner's ``train_dataloader`` config.  The hook builds its own
            loader once, so the training loop's iterator is never disturbed.
        mode: forward mode of mmengine models (``'loss'`` reproduces the
            training forward, e.g. sampled RoIs in detection heads;
            ``'tensor'`` skips the losses).
        stages: a non-empty subset of :data:`STAGES`.
        statistics: ``'batch_average'`` or ``'moving_average'``.
        progress: show an mmengine ProgressBar on rank 0.

    Note:
        Priority ``'LOW'``: after the hooks that prepare the model (EMA
        weight swapping, the running-statistics sync of
        ``SyncNormStatsHook``) and, in ``after_train_iter``, before
        ``CheckpointHook`` (``'VERY_LOW'``), which saves the last
        checkpoint there.
    """

    priority = 'LOW'

    def __init__(self,
                 num_batches: int = 200,
                 dataloader: Optional[dict] = None,
                 mode: str = 'loss',
                 stages: Sequence[str] = ('train_end', ),
                 statistics: str = 'batch_average',
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
        bad = [s for s in stages if s not in STAGES]
        if bad or not stages:
            raise ValueError(f'BatchStatsHook: stages must be a non-empty '
                             f'subset of {STAGES}, got {tuple(stages)!r}')
        if statistics not in STATISTICS:
            raise ValueError(f'BatchStatsHook: statistics must be one of '
                             f'{STATISTICS}, got {statistics!r}')
        if dataloader is not None and not isinstance(dataloader, dict):
            raise TypeError('BatchStatsHook: dataloader must be a config '
                            f'dict or None, got {type(dataloader).__name__}')
        self.num_batches = num_batches
        self.dataloader_cfg = copy.deepcopy(dataloader)
        self.mode = mode
        self.stages = tuple(stages)
        self.statistics = statistics
        self.progress = bool(progress)
        self._dataloader = None
        self._active = None  # whether the model has layers to average
        # meta['batch_stats'] of the batch averages the model holds now,
        # None while it holds moving averages.
        self._holds: Optional[dict] = None

    # ----------------------------------------------------------- helpers
    def _check_model(self, runner) -> bool:
        if self._active is None:
            self._active = any(layer.using_bn
                               for _, layer in switchable_norms(runner.model))
            if not self._active:
                runner.logger.warning(
                    'BatchStatsHook: the model has no SN layer with BN '
                    'statistics (using_bn=True); there is nothing to '
                    'average and the hook does nothing.')
        return self._active

    def _batch_average(self, stage: str) -> bool:
        return self.statistics == 'batch_average' and stage in self.stages

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
                _finite_sampler(cfg), seed=runner.seed)
        return self._dataloader

    def _update(self, runner, stage: str) -> None:
        loader = self._loader(runner)
        try:
            num_batches = min(self.num_batches, len(loader))
        except TypeError:  # an iterable without a length
            num_batches = self.num_batches
        # The moving averages these batch averages replace: the ones saved
        # with the batch averages the model may hold already.
        moving = (
            self._holds['moving_average']
            if self._holds is not None else moving_averages(runner.model))
        counts = compute_batch_stats(
            runner.model,
            loader,
            num_batches,
            forward=default_forward(self.mode),
            progress=self.progress)
        self._holds = batch_stats_meta(num_batches, self.mode, counts, moving)
        runner.logger.info(
            f'BatchStatsHook ({stage}): batch-average statistics of '
            f'{len(counts)} SN layers from {num_batches} batches per '
            f'process ({self._holds["samples"]} samples)')

    def _log_statistics(self, runner, prefix: str) -> None:
        samples = self._holds['samples'] if self._holds is not None else 0
        # A float: mmengine's test-results file drops numpy integers.
        runner.message_hub.update_scalar(f'{prefix}/{STATISTICS_KEY}',
                                         float(samples))

    # ------------------------------------------------------------ stages
    def before_train_iter(self,
                          runner,
                          batch_idx: int,
                          data_batch=None) -> None:
        """Training moves the statistics again: no batch averages now."""
        self._holds = None

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        """After the last iteration: batch averages, before the last
        checkpoint is saved and the final validation runs."""
        if (self._batch_average('train_end')
                and self.is_last_train_iter(runner)
                and self._check_model(runner)):
            self._update(runner, 'train_end')

    def after_train(self, runner) -> None:
        """Warns when training stopped before its last iteration, so the
        checkpoints hold moving averages."""
        if (self._batch_average('train_end') and self._holds is None
                and self._active):
            runner.logger.warning(
                'BatchStatsHook: training stopped before its last '
                'iteration; the checkpoints hold moving averages (run '
                'tools/compute_batch_stats.py for batch averages)')

    def before_val(self, runner) -> None:
        """Batch averages before validation (``'val'`` in ``stages``), and
        the record of which statistics it uses."""
        self._before_evaluation(runner, 'val')

    def before_test(self, runner) -> None:
        """Batch averages before testing (``'test'`` in ``stages``), and
        the record of which statistics it uses; a warning when batch
        averages are wanted but the model holds moving averages."""
        self._before_evaluation(runner, 'test')

    def _before_evaluation(self, runner, stage: str) -> None:
        if not self._check_model(runner):
            return
        if self._batch_average(stage):
            self._update(runner, stage)
        elif (stage == 'test' and self.statistics == 'batch_average'
              and self._holds is None):
            runner.logger.warning(
                'BatchStatsHook: the checkpoint holds moving averages (it '
                'was saved before training ended, or without this hook): '
                "this test uses them; add 'test' to the hook's stages or "
                'run tools/compute_batch_stats.py for batch averages')
        self._log_statistics(runner, stage)

    # ------------------------------------------------------- checkpoints
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Records the batch averages the saved statistics are, if so."""
        meta = checkpoint.setdefault('meta', {})
        meta.pop(META_KEY, None)
        if self._holds is not None:
            meta[META_KEY] = self._holds

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Knows what the loaded statistics are; with
        ``statistics='moving_average'`` loads the saved moving averages in
        place of batch averages."""
        if self.statistics == 'moving_average':
            restore_moving_averages(checkpoint)
            self._holds = None
        else:
            self._holds = (checkpoint.get('meta') or {}).get(META_KEY)
