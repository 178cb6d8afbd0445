"""The one collective SyncSN needs, and a guard that makes it a no-op alone."""
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor


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
