"""Makes per-process running statistics of BN, SN and SSN agree across ranks.

mmengine wraps models in DDP with ``broadcast_buffers=False``: every process
keeps the running statistics of its own batches, and only rank 0's reach the
checkpoint.  :func:`ssn_norm.distributed.sync_running_stats` (the numerics,
pure ``torch.distributed``) replaces them on every rank by the statistics of
the union of the ranks' data; :class:`SyncNormStatsHook` only decides when
to call it: before every checkpoint, validation and epoch end.
"""
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS

from ..distributed import local_stats_norms, sync_running_stats


def checkpoint_due_after_iter(runner) -> bool:
    """Whether an iteration-based CheckpointHook saves after this iter.

    The same test ``CheckpointHook.after_train_iter`` makes; it depends only
    on the iteration, so all ranks agree and can enter a collective together
    (``Runner.save_checkpoint`` itself runs on the main process only).
    """
    for hook in runner.hooks:
        if not isinstance(hook, CheckpointHook) or hook.by_epoch:
            continue
        if hook.every_n_train_iters(runner, hook.interval, hook.save_begin):
            return True
        if hook.save_last and hook.is_last_train_iter(runner):
            return True
    return False


@HOOKS.register_module()
class SyncNormStatsHook(Hook):
    """Synchronises BN / SN / SSN running statistics where they matter.

    Calls :func:`sync_running_stats` on the model

    * after a training iteration at which an iteration-based
      ``CheckpointHook`` of the runner is about to save,
    * at the end of every training epoch (also the end of an
      iteration-based run), before an epoch-based checkpoint is saved,
    * before every validation epoch,

    so checkpoints and evaluations see the statistics of all ranks rather
    than rank 0's alone.  It does not synchronise after every iteration: each
    rank's moving average keeps tracking its own data in between, and their
    mixture then estimates the global statistics (see
    :func:`sync_running_stats`).  Without distributed training it does
    nothing.

    Its priority ``ABOVE_NORMAL`` runs it before ``CheckpointHook`` and
    before mmengine's ``SyncBuffersHook`` (which averages variances); after
    this hook the ranks agree, so that hook's averaging changes nothing.
    """

    priority = 'ABOVE_NORMAL'

    def before_train(self, runner) -> None:
        num_layers = sum(1 for _ in local_stats_norms(runner.model))
        if num_layers == 0:
            runner.logger.warning(
                'SyncNormStatsHook: the model has no BN/SN/SSN layer with '
                'per-process running statistics; the hook does nothing.')
        else:
            runner.logger.info(
                f'SyncNormStatsHook: synchronises the running statistics of '
                f'{num_layers} norm layers across ranks before checkpoints '
                'and validation.')

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        if checkpoint_due_after_iter(runner):
            sync_running_stats(runner.model)

    def after_train_epoch(self, runner) -> None:
        sync_running_stats(runner.model)

    def before_val_epoch(self, runner) -> None:
        sync_running_stats(runner.model)
