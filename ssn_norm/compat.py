"""Runtime workarounds for the frozen OpenMMLab stack, all in one place.

Applied once by :func:`apply_all` when ``ssn_norm`` is imported with mmengine
installed; each patch is idempotent and does nothing where upstream is fine.
Packaging workarounds (``setuptools<82``, ``ftfy``/``regex``, the torch pin)
live in ``tools/install.sh``.

1. mmengine 0.10.7 loads checkpoints with ``torch.load``'s default, which is
   ``weights_only=True`` from torch 2.6 on; its own checkpoints hold
   ``HistoryBuffer`` and numpy objects, so ``--resume`` and ``load_from`` fail
   (open-mmlab/mmengine#1655).  We re-register the local-file loader with
   ``weights_only=False``, as mmengine did on older torch.  Only load
   checkpoint files you trust, as with any pickle.
2. The mmaction2 1.2.0 wheel lacks ``mmaction/models/localizers/drn``
   (open-mmlab/mmaction2#2714), so ``import mmaction.models`` raises.  We
   install a placeholder module whose ``DRN`` raises a clear error when built;
   every other mmaction model imports as usual.  It must run before
   ``mmaction.models`` is first imported, which ``import ssn_norm`` (or
   ``custom_imports=dict(imports=['ssn_norm'])``) does.
3. mmengine resolves every ``mmdet::``/``mmseg::``/``mmaction::`` base by
   re-reading all of that package's ~200 metafiles (about 0.5 s a base).  We
   cache the index per package; the result is the same.
4. setuptools 80 warns on every ``import pkg_resources``, which mmengine
   does at import (the toolboxes need ``setuptools<81`` for it, see
   ``tools/install.sh``); the warning is not actionable, so it is silenced.
5. mmengine's ``LoggerHook.after_test_epoch`` writes the test metrics file
   ``<timestamp>/<timestamp>.json`` from every process of a distributed test,
   all to the same path; concurrent writes can leave it as invalid JSON.  We
   write it from the main process only (its metrics are already gathered).
"""
import functools
import importlib.util
import os.path as osp
import sys
import types
import warnings

_applied = False


def _patch_mmengine_checkpoint_loading() -> None:
    import torch
    from mmengine.runner.checkpoint import CheckpointLoader

    def load_from_local(filename, map_location):
        filename = osp.expanduser(filename)
        if not osp.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        return torch.load(
            filename, map_location=map_location, weights_only=False)

    CheckpointLoader.register_scheme(prefixes='', force=True)(load_from_local)


def _patch_mmengine_config_metainfo() -> None:
    from mmengine.config import utils
    if getattr(utils._get_cfg_metainfo, '_ssn_norm_cached', False):
        return

    @functools.lru_cache(maxsize=None)
    def metainfo_index(package_path: str) -> dict:
        index = utils.load(osp.join(package_path, '.mim', 'model-index.yml'))
        cfg_dict = dict()
        for meta_path in index['Import']:
            meta = utils.load(osp.join(package_path, '.mim', meta_path))
            for model_cfg in meta['Models']:
                if 'Config' in model_cfg:
                    # As upstream: the first entry of a config wins.
                    cfg_dict.setdefault(model_cfg['Config'].partition('/')[-1],
                                        model_cfg)
        return cfg_dict

    def get_cfg_metainfo(package_path: str, cfg_path: str) -> dict:
        cfg_dict = metainfo_index(package_path)
        if cfg_path not in cfg_dict:
            raise ValueError(f'Expected configs: {cfg_dict.keys()}, but got '
                             f'{cfg_path}')
        return cfg_dict[cfg_path]

    get_cfg_metainfo._ssn_norm_cached = True
    utils._get_cfg_metainfo = get_cfg_metainfo


def _patch_mmengine_test_metrics_dump() -> None:
    from mmengine.dist import is_main_process
    from mmengine.fileio import dump
    from mmengine.hooks import LoggerHook
    if getattr(LoggerHook.after_test_epoch, '_ssn_norm_main_only', False):
        return

    def after_test_epoch(self, runner, metrics=None) -> None:
        tag, log_str = runner.log_processor.get_log_after_epoch(
            runner, len(runner.test_dataloader), 'test', with_non_scalar=True)
        runner.logger.info(log_str)
        if is_main_process():
            dump(
                self._process_tags(tag),
                osp.join(runner.log_dir, self.json_log_path))

    after_test_epoch._ssn_norm_main_only = True
    LoggerHook.after_test_epoch = after_test_epoch


class _MissingDRN:
    """Placeholder for mmaction2's DRN, missing from the 1.2.0 wheel."""

    def __init__(self, *args, **kwargs):
        raise ImportError(
            'DRN is not shipped in the mmaction2 1.2.0 wheel '
            '(open-mmlab/mmaction2#2714); install mmaction2 from source to '
            'use it.')


def _patch_mmaction_missing_drn() -> None:
    name = 'mmaction.models.localizers.drn'
    if name in sys.modules:
        return
    spec = importlib.util.find_spec('mmaction')
    if spec is None or not spec.submodule_search_locations:
        return
    root = list(spec.submodule_search_locations)[0]
    if osp.isdir(osp.join(root, 'models', 'localizers', 'drn')):
        return  # a source install that has it
    package = types.ModuleType(name)
    package.__path__ = []
    module = types.ModuleType(name + '.drn')
    module.DRN = _MissingDRN
    package.drn = module
    sys.modules[name] = package
    sys.modules[name + '.drn'] = module


def apply_all() -> None:
    """Apply every workaround whose package is installed; idempotent."""
    global _applied
    if _applied:
        return
    if importlib.util.find_spec('mmengine') is not None:
        warnings.filterwarnings(
            'ignore', message='pkg_resources is deprecated as an API')
        _patch_mmengine_checkpoint_loading()
        _patch_mmengine_config_metainfo()
        _patch_mmengine_test_metrics_dump()
    _patch_mmaction_missing_drn()
    _applied = True
