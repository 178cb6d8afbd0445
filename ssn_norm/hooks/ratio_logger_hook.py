"""Logs the normaliser ratios of SN/SSN layers during training."""
from typing import Optional, Sequence

from mmengine.hooks import Hook, LoggerHook
from mmengine.registry import HOOKS

from ..analysis.ratios import (STAGE_PREFIXES, grouped, mean_shares,
                               model_ratios)
from ..utils import switchable_norms


@HOOKS.register_module()
class RatioLoggerHook(Hook):
    """Puts ratio statistics of the switchable norms into the message hub.

    Whenever the :class:`~mmengine.hooks.LoggerHook` writes a training log
    line, this hook has first stored, under ``train/``:

    * ``ratio/all/<mean|var>_<IN|LN|BN>`` — the mean ratio of each
      normaliser over all SN/SSN layers (a layer without BN counts 0 for
      BN, so the three add up to one); ``_GN`` too where a layer mixes GN;
      a group SN layer counts as one layer per channel group;
    * ``ratio/<group>/<mean|var>_<IN|LN|BN>`` — the same per stage or
      top-level module (``backbone.layer1``, ``backbone.stem``, ``neck``,
      ``roi_head.mask_head``, ``decode_head`` ...; see
      :func:`~ssn_norm.analysis.group_of`), if ``per_group``;
    * with SSN layers: ``ratio/one_hot_layers`` (layers whose mean and
      variance ratios are both frozen one-hot) out of ``ratio/ssn_layers``
      (a group SSN layer: one per channel group).

    The SparsestMax radius is not a ratio: :class:`SparsestMaxRadiusHook`,
    which sets it, logs it (``ssn_radius``).  Each quantity is logged by one
    hook under one name.

    They land in ``vis_data/scalars.json`` and in every other visualizer
    backend (TensorBoard, ...) like the loss; ``tools/plot_ratios.py
    --scalars`` draws them.  The ratios are those each layer's forward uses
    (:func:`~ssn_norm.analysis.model_ratios`): one vectorised computation
    and one host transfer per log line; the model is not modified.

    Args:
        interval: log every ``interval`` iterations (and at the end of each
            epoch).  None (default) follows the runner's LoggerHook so every
            log line holds current ratios, never stale ones.
        per_group: also log per stage / top-level module.  The terminal log
            line grows by six numbers per group; False keeps only ``all``.
        stage_prefixes: top-level modules whose children are groups of
            their own (default ``('backbone', 'roi_head')``).
    """

    priority = 'NORMAL'  # before LoggerHook (BELOW_NORMAL) writes the line

    def __init__(self,
                 interval: Optional[int] = None,
                 per_group: bool = True,
                 stage_prefixes: Sequence[str] = STAGE_PREFIXES) -> None:
        if interval is not None and (not isinstance(interval, int)
                                     or isinstance(interval, bool)
                                     or interval < 1):
            raise ValueError('RatioLoggerHook: interval must be a positive '
                             f'int or None (follow LoggerHook), got '
                             f'{interval!r}')
        if isinstance(
                stage_prefixes,
                str) or not all(isinstance(p, str) for p in stage_prefixes):
            raise ValueError('RatioLoggerHook: stage_prefixes must be a list '
                             'of top-level module names such as '
                             f"['backbone'], got {stage_prefixes!r}")
        self.interval = interval
        self.per_group = bool(per_group)
        self.stage_prefixes = tuple(stage_prefixes)
        self._interval = interval or 50
        self._enabled = True

    def before_train(self, runner) -> None:
        if self.interval is None:
            loggers = [h for h in runner.hooks if isinstance(h, LoggerHook)]
            if loggers:
                self._interval = loggers[0].interval
            else:
                runner.logger.warning(
                    'RatioLoggerHook: no LoggerHook in the runner, so '
                    'nothing writes the scalars; logging every '
                    f'{self._interval} iterations anyway')
        self._enabled = any(True for _ in switchable_norms(runner.model))
        if not self._enabled:
            runner.logger.warning(
                'RatioLoggerHook: the model has no SN/SSN layer; the hook '
                'does nothing.')

    def log_ratios(self, runner) -> None:
        """Compute the statistics now and store them in the message hub."""
        layers = model_ratios(runner.model)
        if not layers:
            return
        hub = runner.message_hub
        groups = {'all': layers}
        if self.per_group:
            groups.update(grouped(layers, self.stage_prefixes))
        for group, members in groups.items():
            for (statistic, normalizer), value in mean_shares(members).items():
                hub.update_scalar(
                    f'train/ratio/{group}/{statistic}_{normalizer}', value)
        ssn = [layer for layer in layers if layer.kind == 'SSN']
        if ssn:
            hub.update_scalar('train/ratio/one_hot_layers',
                              sum(layer.one_hot for layer in ssn))
            hub.update_scalar('train/ratio/ssn_layers', len(ssn))

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        # The LoggerHook's own condition, so its line sees this iteration.
        if self._enabled and (
                self.every_n_inner_iters(batch_idx, self._interval)
                or self.end_of_epoch(runner.train_dataloader, batch_idx)):
            self.log_ratios(runner)
