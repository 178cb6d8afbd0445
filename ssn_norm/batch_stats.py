"""Batch-average inference statistics for SN / SSN (the SN paper's §4).

Instead of the moving averages collected during training, the running
statistics of every SN layer are set to the exact average, over K batches
fed through the frozen network, of the batch moments the layer computes in
training: the BN mean and the BN second moment ``E[var_in + mean_in²]``
(the released numerics: unbiased IN variance).  The variance written is
``E[second moment] - E[mean]²``.

Each batch is weighted by its number of samples, so the result is the
average over all samples seen and does not depend on how they were split
into batches (as long as the layer's input does not: upstream layers
normalise with their own batch statistics, as in training).  In a
multi-process run every process feeds its own K batches and the sums are
all-reduced once at the end: plain SN layers then hold the average over all
processes' samples; SyncSN/SyncSSN layers already see global moments per
batch, each process weights them by its local sample count, and the sum
over processes weights every global batch by its global size.  Both give
the same statistics on every process.
"""
from typing import Any, Callable, Dict, Iterable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .distributed import sum_over_ranks
from .ops.moments import variance
from .utils import switchable_norms, unwrap_model

#: ``forward(model, batch)`` feeds one batch through ``model``.
ForwardFn = Callable[[nn.Module, Any], Any]


def default_forward(mode: str = 'loss') -> ForwardFn:
    """Feeds a batch the way the model trains.

    For an mmengine ``BaseModel`` the batch goes through the model's
    ``data_preprocessor`` (``training=True``) and then
    ``model(**data, mode=mode)``: ``'loss'`` sees exactly what training sees
    (e.g. sampled RoIs in a Mask R-CNN head).  Any other module is called on
    the batch, or on its first element when the batch is a tuple or list
    (``(inputs, targets)``).
    """

    def forward(model: nn.Module, batch: Any) -> Any:
        module = unwrap_model(model)
        preprocessor = getattr(module, 'data_preprocessor', None)
        if isinstance(preprocessor, nn.Module):
            data = preprocessor(batch, True)
            if isinstance(data, dict):
                return module(**data, mode=mode)
            return module(*data, mode=mode)
        if isinstance(batch, (tuple, list)):
            return model(batch[0])
        if isinstance(batch, Tensor):
            return model(batch)
        raise TypeError(
            f'cannot feed a batch of type {type(batch).__name__} to '
            f'{type(module).__name__}; pass forward=callable(model, batch)')

    return forward


class _MomentSums:
    """Sample-weighted sums of one layer's batch moments (float64)."""

    def __init__(self, layer: nn.Module) -> None:
        device = layer.running_mean.device
        channels = layer.num_features
        self.mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.sqmean = torch.zeros_like(self.mean)
        self.count = torch.zeros(1, dtype=torch.float64, device=device)
        self.batch_size = None  # set by the pre-hook before each forward

    def pre_hook(self, layer: nn.Module, args) -> None:
        self.batch_size = args[0].shape[0]

    def record(self, layer: nn.Module, mean_bn: Tensor,
               sqmean_bn: Tensor) -> None:
        weight = float(self.batch_size)
        self.mean.add_(mean_bn.detach().double(), alpha=weight)
        self.sqmean.add_(sqmean_bn.detach().double(), alpha=weight)
        self.count.add_(weight)


def _batches_available(data: Iterable) -> Optional[int]:
    try:
        return len(data)
    except TypeError:
        return None


@torch.no_grad()
def compute_batch_stats(model: nn.Module,
                        data: Iterable,
                        num_batches: int,
                        forward: Optional[ForwardFn] = None,
                        progress: bool = False) -> Dict[str, int]:
    """Sets every SN-family layer's running statistics to batch averages.

    Args:
        model: the network (or its DDP wrapper).  Its parameters and all
            other state are left untouched; only ``running_mean`` and
            ``running_var`` of SN / SSN / SyncSN / SyncSSN layers with BN
            statistics (``using_bn=True``) are written.
        data: an iterable of batches (e.g. the training DataLoader); the
            first ``num_batches`` are used.
        num_batches: K ≥ 1.  In multi-process runs every process must pass
            the same K (SyncSN layers communicate in every forward).
        forward: ``forward(model, batch)``; default :func:`default_forward`.
        progress: show an mmengine ProgressBar (on rank 0).

    Returns:
        ``{layer name: samples averaged over}`` (summed over processes).

    Raises:
        ValueError: bad ``num_batches``, or no layer with BN statistics.
        RuntimeError: ``data`` ran out before ``num_batches`` batches, or a
            layer received no batch (nothing is written then).

    Note:
        The model runs in eval mode except the switchable norms, which run
        in training mode (batch statistics, as in training) with their
        running-statistics update replaced by the recorder; gradients are
        off, so SSN ratios do not freeze.  Every module's ``training`` flag
        is restored afterwards, also on error.
    """
    if (not isinstance(num_batches, int) or isinstance(num_batches, bool)
            or num_batches < 1):
        raise ValueError(
            f'num_batches must be a positive int, got {num_batches!r}')
    layers = [(name, layer) for name, layer in switchable_norms(model)
              if layer.using_bn]
    if not layers:
        raise ValueError(
            f'{type(unwrap_model(model)).__name__} has no SN/SSN layer with '
            'BN statistics (using_bn=True); nothing to average')
    available = _batches_available(data)
    if available is not None and available < num_batches:
        raise RuntimeError(
            f'the data has {available} batches per process, fewer than '
            f'num_batches={num_batches}; lower num_batches')
    forward = forward or default_forward()
    sums = {name: _MomentSums(layer) for name, layer in layers}
    modes = {module: module.training for module in model.modules()}
    handles = []
    bar = None
    if progress and (not dist.is_initialized() or dist.get_rank() == 0):
        from mmengine.utils import ProgressBar
        bar = ProgressBar(num_batches)
    try:
        model.eval()
        for name, layer in layers:
            layer.train()
            layer.moment_recorder = sums[name].record
            handles.append(
                layer.register_forward_pre_hook(sums[name].pre_hook))
        batches = iter(data)
        for index in range(num_batches):
            try:
                batch = next(batches)
            except StopIteration:
                raise RuntimeError(f'the data ran out after {index} batches; '
                                   f'num_batches={num_batches}') from None
            forward(model, batch)
            if bar is not None:
                bar.update()
    finally:
        for handle in handles:
            handle.remove()
        for _, layer in layers:
            layer.moment_recorder = None
        # Set the flags back directly: calling train() again could run
        # overrides with side effects (e.g. freezing stages).
        for module, mode in modes.items():
            module.training = mode
        if bar is not None:
            bar.file.write('\n')

    # One collective for all layers; the sums are sample-weighted, so the
    # sum over processes is the sum over all samples.
    reduced = iter(
        sum_over_ranks([
            moment for layer_sums in sums.values()
            for moment in (layer_sums.mean, layer_sums.sqmean,
                           layer_sums.count)
        ]))
    results, unused = {}, []
    for name, layer in layers:
        mean, sqmean, count = next(reduced), next(reduced), next(reduced)[0]
        if count == 0:
            unused.append(name)
        results[name] = (mean, sqmean, count)
    if unused:
        raise RuntimeError(
            f'{len(unused)} SN layers saw no batch ({", ".join(unused[:8])}'
            f'{", ..." if len(unused) > 8 else ""}); the forward does not '
            'reach them (try another forward/mode)')
    counts = {}
    for name, layer in layers:
        mean, sqmean, count = results[name]
        mean = mean / count
        var = variance(mean, sqmean / count)
        layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
        layer.running_var.copy_(var.to(layer.running_var.dtype))
        counts[name] = int(count)
    return counts


#: Logged with every validation (``val/...``) and test result: the number
#: of training samples the BN statistics of the SN layers were averaged
#: over, or 0 when they are the moving averages collected in training.
STATISTICS_KEY = 'batch_stats_samples'
#: Key of :func:`batch_stats_meta` in a checkpoint's ``meta``.
META_KEY = 'batch_stats'
_RUNNING = ('running_mean', 'running_var')


def moving_averages(model: nn.Module) -> Dict[str, Tensor]:
    """The running statistics of every SN layer with BN statistics, by
    state-dict key (of the unwrapped model), copied to the CPU."""
    return {
        f'{name}.{buffer}': getattr(layer, buffer).detach().cpu().clone()
        for name, layer in switchable_norms(model) if layer.using_bn
        for buffer in _RUNNING
    }


def batch_stats_meta(num_batches: int, mode: str, counts: Dict[str, int],
                     moving_average: Dict[str, Tensor], **extra) -> dict:
    """What a checkpoint holding batch averages records in
    ``meta['batch_stats']``.

    Args:
        num_batches: batches fed per process.
        mode: the forward mode they were fed in.
        counts: :func:`compute_batch_stats`'s ``{layer: samples}``.
        moving_average: :func:`moving_averages` of the model before the
            batch averages replaced them.
        extra: further entries (e.g. ``source``, the checkpoint averaged).

    Returns:
        ``dict(num_batches, mode, samples, moving_average, **extra)``;
        ``samples`` is the fewest samples any layer averaged over (summed
        over processes).
    """
    return dict(
        num_batches=num_batches,
        mode=mode,
        samples=min(counts.values()),
        moving_average=moving_average,
        **extra)


def restore_moving_averages(checkpoint: dict, where: str = 'checkpoint'):
    """Puts the moving averages saved in ``checkpoint['meta']`` back into
    its state dict, in place; returns whether it held batch averages.

    Raises:
        ValueError: the checkpoint holds batch averages but not the moving
            averages they replaced.
    """
    meta = checkpoint.get('meta') or {}
    info = meta.get(META_KEY)
    if info is None:
        return False
    saved = info.get('moving_average')
    if not saved:
        raise ValueError(
            f'{where} holds batch-average statistics without the moving '
            'averages they replaced (written by an older ssn-norm?): it '
            "cannot be evaluated with statistics='moving_average'; test it "
            'with the batch averages, or a checkpoint saved before they '
            'were computed')
    checkpoint['state_dict'].update(saved)
    del meta[META_KEY]
    return True
