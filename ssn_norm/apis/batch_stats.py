"""mmengine driver of :mod:`ssn_norm.batch_stats`: a checkpoint in, the
same checkpoint with batch-average statistics out.

The numerics (:func:`~ssn_norm.batch_stats.compute_batch_stats`) take any
model and any iterable of batches; this module only builds the config's
runner and data loader and reads and writes the checkpoint, behind
``tools/compute_batch_stats.py``.
"""
import os.path as osp
from typing import Dict, Optional

import torch

from ..batch_stats import (META_KEY, batch_stats_meta, compute_batch_stats,
                           default_forward, moving_averages)
from .launch import (build_runner, default_work_dir, load_config,
                     setup_cpu_distributed)


def update_checkpoint_batch_stats(
        config: str,
        checkpoint: str,
        out: str,
        num_batches: int = 200,
        mode: str = 'loss',
        cfg_options: Optional[dict] = None,
        launcher: str = 'none',
        work_dir: Optional[str] = None) -> Dict[str, int]:
    """Batch-average statistics for a trained checkpoint, saved to ``out``.

    Builds the model of ``config`` with mmengine's Runner (so
    ``--launcher pytorch`` runs spread the batches over processes), loads
    ``checkpoint``, feeds ``num_batches`` batches of the config's
    ``train_dataloader`` per process (:func:`compute_batch_stats`) and
    writes ``checkpoint`` with the new state dict (everything else kept,
    ``meta['batch_stats']`` added: :func:`~ssn_norm.hooks.batch_stats_hook.
    batch_stats_meta`, with the moving averages the input held, or those
    its own ``meta['batch_stats']`` kept) to ``out`` on rank 0.

    Returns:
        ``{layer name: samples averaged over}``.

    Raises:
        ValueError: ``out`` is ``checkpoint`` (it would be overwritten), or
            the config has no ``train_dataloader``.
    """
    from mmengine.dist import get_rank
    from mmengine.runner.checkpoint import (_load_checkpoint, get_state_dict,
                                            weights_to_cpu)

    if osp.abspath(out) == osp.abspath(checkpoint):
        raise ValueError(f'refusing to overwrite the input {checkpoint}; '
                         'choose another output path')
    cfg = load_config(config, cfg_options)
    loader_cfg = cfg.get('train_dataloader')
    if loader_cfg is None:
        raise ValueError(f'{config} has no train_dataloader to draw the '
                         'batches from')
    # A test-mode runner: the model, the environment and the checkpoint,
    # without optimizer or training loop.
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper',
                'param_scheduler'):
        cfg[key] = None
    cfg.load_from = checkpoint
    cfg.resume = False
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get('work_dir') or default_work_dir(config)
    setup_cpu_distributed(cfg, launcher)
    runner = build_runner(cfg)
    runner.load_or_resume()
    loader = runner.build_dataloader(loader_cfg, seed=runner.seed)
    moving = moving_averages(runner.model)
    counts = compute_batch_stats(
        runner.model,
        loader,
        num_batches,
        forward=default_forward(mode),
        progress=True)
    if get_rank() == 0:
        saved = _load_checkpoint(checkpoint, map_location='cpu')
        if not isinstance(saved, dict) or 'state_dict' not in saved:
            saved = {}
        saved['state_dict'] = weights_to_cpu(get_state_dict(runner.model))
        meta = dict(saved.get('meta') or {})
        # An input that holds batch averages already keeps the moving
        # averages those replaced.
        moving = (meta.get(META_KEY) or {}).get('moving_average') or moving
        meta[META_KEY] = batch_stats_meta(
            num_batches, mode, counts, moving, source=osp.basename(checkpoint))
        saved['meta'] = meta
        torch.save(saved, out)
        runner.logger.info(
            f'batch-average statistics of {len(counts)} SN layers written '
            f'to {out}')
    return counts
