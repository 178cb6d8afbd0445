"""SyncSN / SyncSSN: SN / SSN whose BN moments span every process."""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from ..distributed import all_reduce_sum, get_world_size
from ..ops.moments import variance
from .switchable_norm import SN, SSN


class _SyncBatchMomentsMixin:
    """All-reduces the BN moments; IN and LN stay per process.

    Each process contributes the sums of its per-sample IN means and second
    moments and its sample count in one packed vector, so processes may hold
    different batch sizes and the result equals SN on the concatenated batch.
    Gradients flow back through the all-reduce exactly.  Ratio-logit gradients
    are left to the data-parallel wrapper (reducing them here as well would
    count them twice).  Without an initialised process group, or with a world
    size of 1, the layer is exactly its unsynchronised parent (mmengine's
    ``revert_sync_batchnorm`` never reverts it).
    """

    def __init__(self, num_features: int, group=None, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.group = group

    def _empty_batch_anchor(self, anchor: Tensor) -> Tensor:
        # An empty process contributes zero sums and a zero count, in
        # forward and (through the all-reduce's backward) in backward.
        if get_world_size(self.group) == 1:
            return anchor * 0
        num_channels = self.num_features
        packed = anchor * 0 + anchor.new_zeros(2 * num_channels + 1)
        total = all_reduce_sum(packed, self.group)
        count = total[-1]
        # Running statistics are global: follow the other processes' batch
        # (one host read, on this rare path only).
        if float(count.detach()) > 0:
            with torch.no_grad():
                mean_bn = total[:num_channels] / count
                sqmean_bn = total[num_channels:2 * num_channels] / count
                self._update_running_stats(mean_bn, sqmean_bn,
                                           variance(mean_bn, sqmean_bn))
        return total.sum() * 0

    def _batch_moments_hook(self) -> Optional[Callable]:
        # Alone, the parent's own reduction: exactly the parent's paths.
        if get_world_size(self.group) == 1:
            return None
        return self._batch_moments

    def _batch_moments(self, mean_in: Tensor,
                       sqmean_in: Tensor) -> Tuple[Tensor, Tensor]:
        # Handed down only across processes (_batch_moments_hook).
        num_channels = mean_in.shape[1]
        count = mean_in.new_full((1, ), mean_in.shape[0])
        packed = torch.cat([mean_in.sum(0), sqmean_in.sum(0), count])
        total = all_reduce_sum(packed, self.group)
        total_count = total[-1]
        return (total[:num_channels] / total_count,
                total[num_channels:2 * num_channels] / total_count)


class SyncSN(_SyncBatchMomentsMixin, SN):
    """:class:`SN` with BN moments synchronised across processes."""


class SyncSSN(_SyncBatchMomentsMixin, SSN):
    """:class:`SSN` with BN moments synchronised across processes."""
