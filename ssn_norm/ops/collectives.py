"""The collectives the switchable norms need, in pure ``torch.distributed``.

Below the layers, so that they and :mod:`ssn_norm.distributed` (running
statistics across ranks, above the layers) share them without importing
each other.  Every function is the identity without a process group or
with one rank.
"""
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ['all_reduce_sum', 'get_world_size']


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
    distributed or with a world size of 1.  Without autograd (grad mode
    off or no input needing a gradient) it is one plain collective."""
    if get_world_size(group) == 1:
        return tensor
    return _AllReduceSum.apply(tensor, group)
