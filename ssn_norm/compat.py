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
"""
import importlib.util
import os.path as osp
import sys
import types

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
    """Apply every workaround whose package is installed; safe to call twice."""
    global _applied
    if _applied:
        return
    if importlib.util.find_spec('mmengine') is not None:
        _patch_mmengine_checkpoint_loading()
    _patch_mmaction_missing_drn()
    _applied = True
