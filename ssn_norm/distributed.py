"""Collectives of the library, in pure ``torch.distributed``.

* :func:`all_reduce_sum`: the differentiable sum SyncSN needs in every
  forward;
* :func:`sum_over_ranks`: one packed float64 all-reduce of many moment
  tensors, shared by :func:`sync_running_stats` and
  :func:`ssn_norm.batch_stats.compute_batch_stats`;
* :func:`sync_running_stats`: per-rank running statistics of BN / SN / SSN
  replaced by those of all ranks together (driven by
  :class:`ssn_norm.hooks.SyncNormStatsHook`).

Every function is a no-op guard without a process group or with one rank.
"""
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .ops.moments import variance


def get_world_size(group=None) -> int:
    """World size of ``group``; 1 when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward sums the gradients over processes.

    Every process's loss depends on the global sum, so the gradient reaching
    each local term is the sum of all processes' gradients of that sum.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:
        ctx.group = group
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        return tensor

    @staticmethod
    def backward(ctx, grad: Tensor):
        # Through the Function again, so that a double backward
        # (create_graph=True) sees the collective as an op, not a copy.
        return _AllReduceSum.apply(grad, ctx.group), None


def all_reduce_sum(tensor: Tensor, group: Optional[object] = None) -> Tensor:
    """Differentiable all-reduce (sum); returns ``tensor`` alone when not
    distributed or with a world size of 1."""
    if get_world_size(group) == 1:
        return tensor
    return _AllReduceSum.apply(tensor, group)


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

    These are SN / SSN with ``using_bn=True`` and torch ``_BatchNorm``
    layers that track running statistics.  SyncSN / SyncSSN and
    ``nn.SyncBatchNorm`` are left out: their running statistics are already
    computed from all-reduced moments and agree across ranks.
    """
    # Imported here: the layers import this module for all_reduce_sum.
    from .layers import SyncSN, SyncSSN
    from .utils import switchable_norms, unwrap_model
    switchable = dict(switchable_norms(model))
    for name, module in unwrap_model(model).named_modules():
        if isinstance(module, (SyncSN, SyncSSN, nn.SyncBatchNorm)):
            continue
        if name in switchable and switchable[name] is module:
            if module.using_bn:
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
