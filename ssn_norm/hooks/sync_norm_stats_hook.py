"""Makes per-process running statistics of BN, SN and SSN agree across ranks.

mmengine wraps models in DDP with ``broadcast_buffers=False``: every process
keeps the running statistics of its own batches, and only rank 0's reach the
checkpoint.  :func:`sync_running_stats` replaces them on every rank by the
statistics of the union of the ranks' data; :class:`SyncNormStatsHook` calls
it before every checkpoint, validation and epoch end.
"""
from typing import Iterator, List, Tuple

import torch
import torch.distributed as dist
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..distributed import get_world_size
from ..layers.switchable_norm import _SwitchableNormBase
from ..layers.sync_switchable_norm import _SyncBatchMomentsMixin
from ..utils import unwrap_model


def local_stats_norms(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """Norm layers of ``model`` whose running statistics are per process.

    These are SN / SSN with ``using_bn=True`` and torch ``_BatchNorm``
    layers that track running statistics.  SyncSN / SyncSSN and
    ``nn.SyncBatchNorm`` are left out: their running statistics are already
    computed from all-reduced moments and agree across ranks.
    """
    for name, module in unwrap_model(model).named_modules():
        if isinstance(module, (_SyncBatchMomentsMixin, nn.SyncBatchNorm)):
            continue
        if isinstance(module, _SwitchableNormBase) and module.using_bn:
            yield name, module
        elif (isinstance(module, _BatchNorm) and module.track_running_stats
              and module.running_mean is not None):
            yield name, module


@torch.no_grad()
def sync_running_stats(model: nn.Module, group=None) -> int:
    """Replace per-rank running statistics by those of all ranks together.

    Every rank's running mean and variance estimate the mean and variance of
    the data that rank saw; the data of all ranks is the equal-weight mixture
    of those populations.  Its mean is the average of the running means and
    its variance the average second moment ``running_var + running_mean²``
    minus the squared mean.  Averaging the variances instead would drop the
    spread of the per-rank means and understate the variance.

    One all-reduce of one packed float64 vector (so ``E[x²] - E[x]²`` does
    not cancel catastrophically) serves every layer.  Afterwards all ranks
    hold bitwise identical statistics.  ``num_batches_tracked`` becomes the
    rounded average over ranks (under DDP all ranks count the same batches).

    Guarantees: for SN / SSN with ``using_moving_average=False`` (exact
    averages of batch moments) and equal per-rank batch sizes, the result
    equals the running statistics SyncSN would have computed on the same
    data.  For moving averages it is the mixture of the per-rank moving
    averages, which tracks the global statistics when called rarely (e.g.
    before checkpoints), not after every iteration.

    Must be called by every rank of ``group``, with models holding the same
    layers.  A no-op (returning 0) without a process group or with one rank.

    Args:
        model: the model, optionally wrapped (DDP, MMDistributedDataParallel).
        group: the process group; None means the default group.

    Returns:
        The number of layers whose statistics were synchronised.
    """
    layers = [layer for _, layer in local_stats_norms(model)]
    world_size = get_world_size(group)
    if not layers or world_size == 1:
        return 0
    device = layers[0].running_mean.device
    parts: List[Tensor] = []
    for layer in layers:
        mean = layer.running_mean.to(device, torch.float64)
        var = layer.running_var.to(device, torch.float64)
        parts += [mean, var + mean.square()]
        count = getattr(layer, 'num_batches_tracked', None)
        if count is not None:
            parts.append(count.to(device, torch.float64).reshape(1))
    packed = torch.cat(parts)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    packed /= world_size
    offset = 0
    for layer in layers:
        num = layer.running_mean.numel()
        mean = packed[offset:offset + num]
        sqmean = packed[offset + num:offset + 2 * num]
        offset += 2 * num
        layer.running_mean.copy_(mean)
        layer.running_var.copy_((sqmean - mean.square()).clamp(min=0))
        if getattr(layer, 'num_batches_tracked', None) is not None:
            layer.num_batches_tracked.copy_(packed[offset].round())
            offset += 1
    return len(layers)


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
