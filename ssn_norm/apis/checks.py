"""Warnings for config mistakes that would otherwise pass silently.

The tools call :func:`warn_config_mistakes` on every config they build:

* **custom_imports missing.**  ``tools/train.py`` imports ``ssn_norm``
  itself, so a config that names SN, our hooks or optimiser wrappers
  without ``custom_imports`` works there, and fails under plain
  mmengine / mmdet / mmseg / mmaction2 with ``KeyError: 'Cannot find None
  in registry ...'``.
* **A top-level norm_cfg that reaches nothing.**  ``norm_cfg =
  dict(type='SN')`` in a child of an upstream config changes no layer: the
  inherited model dicts were bound to the parent's norm when the parent was
  read.  The built model is checked, not the config text.
* **Relative data paths that are not there.**  ``data/tiny_coco/`` is
  read from the working directory, not from the config's folder.
* **Recipe hooks dropped** (training only).  A child that sets
  ``custom_hooks`` replaces its parent's list: SSN layers without
  ``SparsestMaxRadiusHook`` stay at radius 0 (sparsemax) and never freeze;
  per-process SN/SSN statistics without ``SyncNormStatsHook`` diverge
  across ranks in a distributed run.
"""
import os
import os.path as osp
import warnings
from typing import Any, Iterator, List, Optional, Set, Tuple

from mmengine.config import Config
from torch import nn

from ..layers import SSN, SwitchableNormBase
from ..utils import switchable_norms
from .norms import count_norms, format_counts

#: How a config must import the plugin (the snippet the warnings show).
CUSTOM_IMPORTS = ("custom_imports = dict(imports=['ssn_norm'], "
                  'allow_failed_imports=False)')
_SWITCHABLE = ('SN', 'SSN', 'SyncSN', 'SyncSSN')
#: Types the tools add to every config themselves (``RngStateHook``, see
#: :func:`~ssn_norm.apis.launch.add_rng_state_hook`): not the config's.
_TOOL_ADDED = ('RngStateHook', )


class ConfigWarning(UserWarning):
    """A config mistake that trains or tests the wrong thing, or works only
    under this project's tools."""


def plugin_types() -> Set[str]:
    """Every type name ``ssn_norm`` registers (norms, hooks, optimiser
    wrappers and constructors, models), in any mmengine registry or an
    upstream child of one."""
    from mmengine import registry as root

    import ssn_norm  # noqa: F401  registers them
    found: Set[str] = set()
    pending = [
        getattr(root, name) for name in dir(root)
        if isinstance(getattr(root, name), root.Registry)
    ]
    seen = set()
    while pending:
        registry = pending.pop()
        if id(registry) in seen:
            continue
        seen.add(id(registry))
        found.update(name for name, obj in registry.module_dict.items()
                     if getattr(obj, '__module__', '').startswith('ssn_norm'))
        pending.extend(registry.children.values())
    return found


def _typed(tree: Any, path: str = '') -> Iterator[Tuple[str, str]]:
    """``(path, type)`` of every dict with a string ``type`` in ``tree``."""
    if isinstance(tree, dict):
        if isinstance(tree.get('type'), str):
            yield path or '(config)', tree['type']
        for key, value in tree.items():
            yield from _typed(value, f'{path}.{key}' if path else str(key))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from _typed(value, f'{path}[{index}]')


def _imports_plugin(cfg: Config) -> bool:
    imports = (cfg.get('custom_imports') or {}).get('imports') or []
    imports = [imports] if isinstance(imports, str) else imports
    return any(name == 'ssn_norm' or name.startswith('ssn_norm.')
               for name in imports)


def _missing_data_roots(cfg: Config) -> List[Tuple[str, str]]:
    """``(loader, data_root)`` of each relative ``data_root`` that does
    not exist under the working directory."""
    missing = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = (cfg.get(loader) or {}).get('dataset') or {}
        while 'data_root' not in dataset and 'dataset' in dataset:
            dataset = dataset['dataset']  # a wrapper, e.g. RepeatDataset
        root = dataset.get('data_root')
        if (isinstance(root, str) and root and not osp.isabs(root)
                and not osp.exists(root)):
            missing.append((loader, root))
    return missing


def config_warnings(cfg: Config) -> List[str]:
    """Mistakes visible in the config alone: it uses the plugin's types
    without ``custom_imports`` of ``ssn_norm``; a relative ``data_root``
    that does not exist where the tool runs."""
    found = []
    missing = _missing_data_roots(cfg)
    if missing:
        listed = ', '.join(f'{root!r} ({loader})' for loader, root in missing)
        found.append(
            f'data_root {listed} does not exist under the working '
            f'directory {os.getcwd()}: relative data paths are read from '
            "where you run, not from the config's folder. Run from the "
            'folder that holds them (the mini suite makes data/tiny_* in '
            'its --root, default the current directory) or set data_root '
            'in each dataloader of your config (docs/own_data.md)')
    return found + _import_warnings(cfg)


def _import_warnings(cfg: Config) -> List[str]:
    if _imports_plugin(cfg):
        return []
    ours = plugin_types()
    used = [(path, kind) for path, kind in _typed(cfg.to_dict())
            if kind.rpartition('.')[2] in ours
            and kind.rpartition('.')[2] not in _TOOL_ADDED]
    if not used:
        return []
    listed = ', '.join(f'{kind} ({path})' for path, kind in used[:4])
    more = f' and {len(used) - 4} more' if len(used) > 4 else ''
    return [
        f'the config uses ssn-norm types, {listed}{more}, but has no '
        'custom_imports of ssn_norm: the ssn-norm tools import the plugin '
        'themselves, plain mmengine / mmdet / mmseg / mmaction2 tools and '
        "inference APIs fail with KeyError: 'Cannot find None in registry "
        f"...'. Add {CUSTOM_IMPORTS}"
    ]


def _hook_types(cfg: Config) -> Set[str]:
    return {
        str(hook.get('type')).rpartition('.')[2]
        for hook in cfg.get('custom_hooks') or []
    }


def model_warnings(cfg: Config,
                   model: nn.Module,
                   training: bool = False) -> List[str]:
    """Mistakes only the built ``model`` shows (see the module docstring);
    the hook checks only when ``training``."""
    found = []
    top = cfg.get('norm_cfg')
    kind = top.get('type') if isinstance(top, dict) else None
    if kind in _SWITCHABLE and not any(
            type(layer).__name__ == kind
            for _, layer in switchable_norms(model)):
        counts = count_norms(model)
        layers = '; '.join(f'{part}: {format_counts(c)}'
                           for part, c in counts.items()) or 'none'
        found.append(
            f"the config sets norm_cfg=dict(type='{kind}') at the top "
            f'level, but the built model has no {kind} layer (norm layers: '
            f'{layers}). A top-level norm_cfg does not reach an inherited '
            "model: the parent's model dicts took their norm when the "
            'parent was read. Set it in each part (e.g. '
            f"model.backbone.norm_cfg=dict(type='{kind}')) or write the "
            f'child with python tools/swap_norm.py PARENT --norm {kind}')
    if not training:
        return found
    hooks = _hook_types(cfg)
    sparse = sum(1 for _, layer in switchable_norms(model)
                 if isinstance(layer, SSN))
    if sparse and 'SparsestMaxRadiusHook' not in hooks:
        found.append(
            f'the model has {sparse} SSN layers but custom_hooks has no '
            'SparsestMaxRadiusHook: the radius stays at 0 (sparsemax) and '
            'no layer ever freezes one-hot. A child that sets custom_hooks '
            "replaces its parent's list; extend it instead: custom_hooks = "
            "_base_.custom_hooks + [dict(type='YourHook')]")
    local = sum(
        1 for _, layer in switchable_norms(model)
        if isinstance(layer, SwitchableNormBase)
        and not type(layer).__name__.startswith('Sync') and layer.using_bn)
    if (local and cfg.get('launcher', 'none') != 'none'
            and 'SyncNormStatsHook' not in hooks):
        found.append(
            f'the model has {local} SN/SSN layers with per-process running '
            'statistics and this run is distributed, but custom_hooks has '
            'no SyncNormStatsHook: checkpoints and validation would use '
            "rank 0's statistics alone. A child that sets custom_hooks "
            "replaces its parent's list; extend it instead: custom_hooks = "
            "_base_.custom_hooks + [dict(type='YourHook')]")
    return found


def warn_config_mistakes(cfg: Config,
                         model: Optional[nn.Module] = None,
                         training: bool = False) -> List[str]:
    """Issues a :class:`ConfigWarning` for each of
    :func:`config_warnings` and (given the built ``model``)
    :func:`model_warnings`; returns their messages."""
    messages = config_warnings(cfg)
    if model is not None:
        messages += model_warnings(cfg, model, training)
    for message in messages:
        warnings.warn(message, ConfigWarning, stacklevel=2)
    return messages
