"""Running statistics across ranks, in pure ``torch.distributed``.

* :func:`sum_over_ranks`: one packed float64 all-reduce of many moment
  tensors, shared by :func:`sync_running_stats` and
  :func:`ssn_norm.batch_stats.compute_batch_stats`;
* :func:`sync_running_stats`: per-rank running statistics of BN / SN / SSN
  replaced by those of all ranks together (driven by
  :class:`ssn_norm.hooks.SyncNormStatsHook`).

Every function is a no-op guard without a process group or with one rank.
The collectives the layers need in their forward (:func:`all_reduce_sum`,
:func:`get_world_size`) live below them, in :mod:`ssn_norm.ops.collectives`;
nothing here imports the layers.
"""
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .ops.collectives import all_reduce_sum, get_world_size
from .ops.moments import variance

__all__ = [
    'all_reduce_sum', 'get_world_size', 'local_stats_norms', 'sum_over_ranks',
    'sync_running_stats'
]


def sum_over_ranks(tensors: Sequence[Tensor],
                   group: Optional[object] = None) -> List[Tensor]:
    """Sums each tensor over the ranks of ``group`` with one all-reduce.

    The tensors are flattened into one float64 vector, so a single
    collective serves any number of layers and ``E[x²] - E[x]²`` computed
    from the sums does not cancel catastrophically in low precision.

    Args:
        tensors: at least one tensor, all on one device (any dtypes and
            shapes); they are not modified.
        group: the process group; None means the default group.

    Returns:
        float64 tensors of the input shapes holding the sums over ranks;
        without a process group or with one rank, float64 copies of the
        inputs.  Every rank receives bitwise identical sums.

    Raises:
        ValueError: ``tensors`` is empty.
    """
    if not tensors:
        raise ValueError('sum_over_ranks needs at least one tensor, got none')
    packed = torch.cat(
        [tensor.detach().reshape(-1).double() for tensor in tensors])
    if get_world_size(group) > 1:
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    return [
        part.view_as(tensor) for part, tensor in zip(
            packed.split([tensor.numel() for tensor in tensors]), tensors)
    ]


def local_stats_norms(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """Norm layers of ``model`` whose running statistics are per process.

    These are the layers that say so (``local_running_stats``: SN / SSN
    with a batch member) and torch ``_BatchNorm`` layers that track running
    statistics.  SyncSN / SyncSSN and ``nn.SyncBatchNorm`` are left out:
    their running statistics are already computed from all-reduced moments
    and agree across ranks.
    """
    for name, module in getattr(model, 'module', model).named_modules():
        local = getattr(module, 'local_running_stats', None)
        if local is not None:
            if local:
                yield name, module
        elif (isinstance(module, _BatchNorm)
              and not isinstance(module, nn.SyncBatchNorm)
              and module.track_running_stats
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

    One all-reduce of one packed float64 vector (:func:`sum_over_ranks`)
    serves every layer.  Afterwards all ranks hold bitwise identical
    statistics.  ``num_batches_tracked`` becomes the rounded average over
    ranks (under DDP all ranks count the same batches).

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
            parts.append(count.to(device, torch.float64))
    sums = iter(sum_over_ranks(parts, group))
    for layer in layers:
        mean = next(sums) / world_size
        sqmean = next(sums) / world_size
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(variance(mean, sqmean))
        if getattr(layer, 'num_batches_tracked', None) is not None:
            layer.num_batches_tracked.copy_((next(sums) / world_size).round())
    return len(layers)
