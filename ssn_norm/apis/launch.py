"""Config edits behind ``tools/train.py`` and ``tools/test.py``.

One set of tools serves mmdet, mmseg and mmaction2 configs: the toolbox is
the config's ``default_scope``, and the few places where the three upstream
tools differ (visualisation and result dumping) are handled here.
"""
import argparse
import os
import os.path as osp
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction

TOOLBOXES = ('mmdet', 'mmseg', 'mmaction')


def toolbox_of(cfg: Config) -> str:
    """The config's toolbox (its ``default_scope``); errors if unsupported."""
    scope = cfg.get('default_scope')
    if scope not in TOOLBOXES:
        raise ValueError(
            f'the config has default_scope={scope!r}; the ssn-norm tools '
            f'support {", ".join(TOOLBOXES)} configs (inherit one of their '
            "bases, e.g. _base_ = 'mmdet::mask_rcnn/...')")
    return scope


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--cfg-options``, ``--launcher`` and ``--local-rank``, as upstream."""
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value (xxx=yyy format)')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_tool_args(
        parser: argparse.ArgumentParser,
        argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``argv`` (default: the command line), exporting ``LOCAL_RANK``
    as the old launchers expect."""
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """``Config.fromfile`` plus ``--cfg-options`` overrides."""
    cfg = Config.fromfile(path)
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    return cfg


def build_runner(cfg: Config):
    """The config's runner: ``runner_type`` if set, else mmengine's."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def default_work_dir(config_path: str) -> str:
    return osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def setup_cpu_distributed(cfg: Config, launcher: str) -> None:
    """Make ``--launcher pytorch`` work on machines without CUDA.

    mmengine's pytorch launcher calls ``torch.cuda.set_device``
    unconditionally and its DDP wrapper passes ``device_ids=[LOCAL_RANK]``.
    Without CUDA we initialise a gloo process group from torchrun's
    environment ourselves (mmengine then skips its own initialisation) and
    build the wrapper with ``device_ids=None``.  Giving a wrapper config
    also drops mmengine's defaults for a config without one, so they are
    restored unless the config sets them: ``broadcast_buffers=False`` (as on
    GPUs; DDP's own default would overwrite every rank's buffers with rank
    0's at each forward) and the config's ``find_unused_parameters``.  With
    CUDA nothing changes.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise RuntimeError(
            f'--launcher {launcher} needs CUDA; on CPU-only machines use '
            '--launcher pytorch under torchrun (gloo backend)')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo', init_method='env://')
    wrapper = dict(
        cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel'))
    wrapper['device_ids'] = None
    ddp_types = ('MMDistributedDataParallel', 'DistributedDataParallel')
    if wrapper.get('type', ddp_types[0]) in ddp_types:
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters',
                           cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper
    env_cfg = cfg.get('env_cfg') or {}
    env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    cfg.env_cfg = env_cfg


def apply_train_options(cfg: Config,
                        config_path: str,
                        work_dir: Optional[str] = None,
                        resume: Optional[str] = None,
                        amp: bool = False,
                        launcher: str = 'none') -> Config:
    """Upstream ``tools/train.py`` semantics for the common options."""
    toolbox_of(cfg)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(config_path)
    if amp:
        optim_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        amp_types = {
            'OptimWrapper': 'AmpOptimWrapper',
            'RatioClipOptimWrapper': 'AmpRatioClipOptimWrapper'
        }
        if optim_type in amp_types.values():
            pass  # already mixed precision
        elif optim_type in amp_types:
            cfg.optim_wrapper.type = amp_types[optim_type]
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
        else:
            raise ValueError(f'--amp does not know how to wrap {optim_type}; '
                             'set optim_wrapper.type to an AMP wrapper')
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        if not osp.isfile(resume):
            raise FileNotFoundError(f'--resume {resume}: no such checkpoint')
        cfg.resume = True
        cfg.load_from = resume
    setup_cpu_distributed(cfg, launcher)
    return cfg


def apply_test_outputs(cfg: Config,
                       config_path: str,
                       checkpoint: str,
                       work_dir: Optional[str] = None,
                       out: Optional[str] = None,
                       show_dir: Optional[str] = None,
                       launcher: str = 'none') -> Config:
    """Upstream ``tools/test.py`` semantics for mmdet, mmseg and mmaction."""
    toolbox = toolbox_of(cfg)
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint} does not exist')
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(config_path)
    cfg.load_from = checkpoint
    if show_dir is not None:
        hooks = cfg.get('default_hooks') or {}
        if 'visualization' not in hooks:
            raise RuntimeError(
                '--show-dir needs default_hooks.visualization in the config')
        vis = hooks['visualization']
        if toolbox == 'mmdet':
            vis.update(draw=True, test_out_dir=show_dir)
        elif toolbox == 'mmseg':
            vis.update(draw=True)
            cfg.visualizer['save_dir'] = show_dir
        else:
            vis.update(enable=True, out_dir=show_dir)
    if out is not None:
        if not out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must be a .pkl/.pickle file, got {out}')
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        dump = dict(
            type='DumpDetResults' if toolbox == 'mmdet' else 'DumpResults',
            out_file_path=out)
        evaluator = cfg.test_evaluator
        if isinstance(evaluator, (list, tuple)):
            cfg.test_evaluator = list(evaluator) + [dump]
        elif 'metrics' in evaluator or evaluator.get('type') == 'Evaluator':
            metrics = evaluator.get('metrics', [])
            metrics = metrics if isinstance(metrics, list) else [metrics]
            evaluator['metrics'] = metrics + [dump]
        else:
            cfg.test_evaluator = [evaluator, dump]
    setup_cpu_distributed(cfg, launcher)
    return cfg
