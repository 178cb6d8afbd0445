"""SyncSN / SyncSSN: SN / SSN whose batch moments span every process."""
from typing import Optional

from ..ops.collectives import get_world_size
from ..ops.moments import Sync
from .switchable_norm import SN, SSN


class _SyncBatchMixin:
    """Takes the batch members' averages over every process; IN and LN stay
    per process.

    Each process contributes the sums of its per-sample IN means and second
    moments and its sample count in one packed all-reduce
    (:mod:`ssn_norm.ops.moments`), so processes may hold different batch
    sizes (an empty one included) and the result equals SN on the
    concatenated batch.  Gradients flow back through the all-reduce exactly.
    Ratio-logit gradients are left to the data-parallel wrapper (reducing
    them here as well would count them twice).  Without an initialised
    process group, or with a world size of 1, the layer is exactly its
    unsynchronised parent (mmengine's ``revert_sync_batchnorm`` never
    reverts it).
    """

    def __init__(self, num_features: int, group=None, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.group = group

    @property
    def local_running_stats(self) -> bool:
        return False  # computed from every process's batch moments

    def _sync(self) -> Optional[Sync]:
        if get_world_size(self.group) == 1:
            return None
        return Sync(self.group)


class SyncSN(_SyncBatchMixin, SN):
    """:class:`SN` with batch moments synchronised across processes."""


class SyncSSN(_SyncBatchMixin, SSN):
    """:class:`SSN` with batch moments synchronised across processes."""
