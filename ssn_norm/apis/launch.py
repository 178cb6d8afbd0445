"""Config edits behind ``tools/train.py`` and ``tools/test.py``.

One set of tools serves mmdet, mmseg and mmaction2 configs: the toolbox is
the config's ``default_scope``, and the few places where the three upstream
tools differ (visualisation and result dumping) are handled here.
"""
import argparse
import json
import os
import os.path as osp
from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction

# The file name is the analysis side's, which reads it back.
from ..analysis.runs import RUN_INFO

if TYPE_CHECKING:
    from mmengine.runner import Runner

TOOLBOXES = ('mmdet', 'mmseg', 'mmaction')


def toolbox_of(cfg: Config) -> str:
    """The config's toolbox (its ``default_scope``); errors if unsupported."""
    scope = cfg.get('default_scope')
    if scope in TOOLBOXES:
        return scope
    raise ValueError(
        f'the config has default_scope={scope!r}; the ssn-norm tools '
        f'support {", ".join(TOOLBOXES)} configs (inherit one of their '
        "bases, e.g. _base_ = 'mmdet::mask_rcnn/...')")


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


def resolve_config(path: str) -> str:
    """The file of a config given as a path or, like an upstream
    ``_base_``, as ``mmdet::``/``mmseg::``/``mmaction::<path in the
    package's configs>``.

    Raises:
        FileNotFoundError: no such file, naming both forms.
    """
    if osp.isfile(path):
        return path
    if '::' in path:
        try:
            return Config._get_cfg_path(path, '')[0]
        except (AssertionError, ValueError, FileNotFoundError) as error:
            raise FileNotFoundError(
                f'config {path!r}: not found in the installed package '
                f'({error}); give a file path, or mmdet::, mmseg:: or '
                'mmaction:: and the path under the package\'s configs/, '
                "e.g. 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'"
            ) from error
    raise FileNotFoundError(
        f'config {path!r}: no such file (relative paths are read from '
        f'{os.getcwd()}); an upstream config is given as e.g. '
        "'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'")


def load_config(path: str,
                cfg_options: Optional[dict] = None,
                format_python_code: bool = True) -> Config:
    """``Config.fromfile`` (of a path or an ``mmdet::``-style name, see
    :func:`resolve_config`) plus ``--cfg-options`` overrides.

    ``format_python_code=False`` dumps and logs the config as plain Python
    text, without yapf (:func:`ssn_norm.compat.plain_text_config`): the
    benchmark suite's short runs save seconds per dump; the tools keep
    mmengine's formatted dumps.
    """
    cfg = Config.fromfile(resolve_config(path))
    if not format_python_code:
        from ..compat import plain_text_config
        cfg = plain_text_config(cfg)
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    return cfg


def build_runner(cfg: Config, training: bool = False):
    """The config's runner: ``runner_type`` if set, else mmengine's.

    Then warns (:func:`~ssn_norm.apis.checks.warn_config_mistakes`) about
    the mistakes that would otherwise pass silently: no ``custom_imports``
    of the plugin, a top-level ``norm_cfg`` that reaches no layer of the
    built model and, when ``training``, dropped recipe hooks.
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from .checks import warn_config_mistakes
    if 'runner_type' in cfg:
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    warn_config_mistakes(cfg, runner.model, training)
    return runner


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


def close_distributed() -> None:
    """Synchronises the ranks and destroys the default process group, if
    one is initialised; a no-op in a single-process run.

    The tools call this once their run has finished on every rank.  A gloo
    group left to interpreter shutdown can abort a rank that has already
    done its work ("terminate called without an active exception", see
    pytorch/pytorch#190489), and torchrun then fails the whole launch.  Not
    called when the run raised: other ranks may still wait in a collective,
    and the error is what the user needs to see.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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
    add_rng_state_hook(cfg)
    setup_cpu_distributed(cfg, launcher)
    return cfg


def add_rng_state_hook(cfg: Config) -> Config:
    """Add ``RngStateHook`` to ``cfg.custom_hooks`` unless it is there.

    mmengine's checkpoints lack the random generators' states, so without
    the hook a resumed run draws other dropout masks and augmentations than
    an uninterrupted one (:mod:`ssn_norm.hooks.rng_state_hook`).  Added
    here rather than in the configs so every config trained by the tools
    resumes exactly.
    """
    from ..hooks import RngStateHook
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(
            hook.get('type') in ('RngStateHook', RngStateHook)
            for hook in hooks):
        hooks.append(dict(type='RngStateHook'))
    cfg.custom_hooks = hooks
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


def apply_tta(cfg: Config) -> Config:
    """Test with the config's test-time augmentation, as ``--tta`` of
    mmseg's and mmdet's ``tools/test.py``.

    The test dataset's pipeline becomes ``cfg.tta_pipeline`` and the model
    is wrapped by ``cfg.tta_model`` (e.g. mmseg's ``SegTTAModel``, which
    averages the predictions of the augmented copies), so a checkpoint
    trained with the config loads into the wrapped module unchanged.

    Raises:
        ValueError: when the config has no ``tta_model`` or no
            ``tta_pipeline``, naming what to add (upstream mmdet warns and
            invents a flip-only default instead), or when the test dataset
            has no pipeline to replace.  The config is left unchanged
            then.
    """
    missing = [k for k in ('tta_model', 'tta_pipeline') if not cfg.get(k)]
    if missing:
        raise ValueError(
            f'--tta: the config has no {" and no ".join(missing)}; define '
            "both (mmseg's _base_ datasets and default_runtime.py do: "
            "tta_model = dict(type='SegTTAModel') and a tta_pipeline of "
            "TestTimeAug; mmdet: dict(type='DetTTAModel', tta_cfg=...)) or "
            'test without --tta')
    dataset = cfg.test_dataloader.dataset
    # A dataset wrapper (e.g. RepeatDataset) has no pipeline of its own:
    # the dataset it wraps has.
    while 'pipeline' not in dataset and 'dataset' in dataset:
        dataset = dataset.dataset
    if 'pipeline' not in dataset:
        raise ValueError('--tta: test_dataloader.dataset has no pipeline to '
                         f'replace with tta_pipeline: {dict(dataset)}')
    dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model
    return cfg


def write_run_info(runner: 'Runner',
                   tta: bool,
                   config_path: str,
                   checkpoint: Optional[str] = None) -> Optional[str]:
    """Record how this test runs, beside its metrics (rank 0 only).

    The leaderboard tells a multi-scale test from a single-scale one of the
    same config by this file's ``tta``, not by the config's name.  Written
    before the test starts, so a test that crashes leaves the file and no
    metrics, which the leaderboard skips.

    Args:
        runner: the built test runner (its ``log_dir`` is where mmengine
            writes the metrics ``<timestamp>.json``).
        tta: whether :func:`apply_tta` edited the config.
        config_path: the config file, recorded as an absolute path.
        checkpoint: the checkpoint tested, recorded likewise.

    Returns:
        The file written, or None on the other ranks.
    """
    from mmengine.dist import is_main_process
    if not is_main_process():
        return None
    os.makedirs(runner.log_dir, exist_ok=True)
    path = osp.join(runner.log_dir, RUN_INFO)
    info = dict(
        tta=bool(tta),
        config=osp.abspath(config_path),
        checkpoint=None if checkpoint is None else osp.abspath(checkpoint),
        model=runner.cfg.model.get('type'))
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(info, f, indent=2)
        f.write('\n')
    return path
