"""Swap every normalisation layer of a config's model for SN, SSN, SyncSN
or SyncSSN, as a short child config that cannot silently do nothing.

A top-level ``norm_cfg = dict(type='SN')`` in a child of an upstream config
changes nothing: the inherited model dicts were bound to the parent's norm
when the parent was read.  :func:`swap_norm` instead builds the parent's
model, finds every normalisation layer in it, maps each layer to the model
dict that builds it (the module path ``roi_head.bbox_head.shared_convs.0``
leads to ``model.roi_head.bbox_head``; a list of heads is followed by
index), sets the chosen norm there, adds the recipe (``custom_imports``,
the optimiser rule for the ratio logits, the hooks), then builds the child
and checks that it holds the chosen norm and no other norm layer, every
one trainable.  Only then is the child written.

Decisions, each visible in the child it writes:

* ``norm_cfg`` replaces the parent's whole (``_delete_=True``): a GN
  ``num_groups=32`` or a BN ``momentum`` merged into SN's arguments would
  change the layer (``num_groups`` is group SN).
* Frozen norms are unfrozen: ``requires_grad=True`` in the norm,
  ``norm_eval=False`` where the module has ``norm_eval`` set (it only ever
  reaches ``_BatchNorm``), and ``frozen_stages=-1`` unless
  ``keep_frozen_stages``: a frozen stage's SN would keep its initial,
  uniform ratios and the BN checkpoint's statistics for the whole run.
* mmaction2's ``ResNet3d`` with ImageNet inflation (``pretrained2d``)
  becomes :class:`~ssn_norm.convert.inflate_i3d.ResNet3dExactInflate`,
  told that a BN checkpoint lacks the switchable state: upstream's
  inflation raises ``KeyError`` on SN's ratio logits.
* The recipe pieces are the ones the project's configs use
  (``configs/_base_/switchable_norm.py``), copied in as values so the
  child depends on no file of this repository.
"""
import os
import os.path as osp
import tempfile
import textwrap
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from mmengine.config import Config, ConfigDict
from torch import nn

from ..layers import SN, SSN, SyncSN, SyncSSN
from .launch import load_config, resolve_config
from .norms import census_table, count_norms, is_trainable, norm_layers

#: The norms :func:`swap_norm` sets, by their registered names.
SWAP_NORMS = {'SN': SN, 'SSN': SSN, 'SyncSN': SyncSN, 'SyncSSN': SyncSSN}
#: Where the recipe pieces live, relative to the repository root.
RECIPE_FILE = osp.join('configs', '_base_', 'switchable_norm.py')
_OPTIM_WRAPPERS = {
    'OptimWrapper': 'RatioClipOptimWrapper',
    'AmpOptimWrapper': 'AmpRatioClipOptimWrapper',
    'RatioClipOptimWrapper': 'RatioClipOptimWrapper',
    'AmpRatioClipOptimWrapper': 'AmpRatioClipOptimWrapper'
}
_CONSTRUCTORS = (None, 'DefaultOptimWrapperConstructor',
                 'SwitchableOptimWrapperConstructor')
Path = Tuple[Any, ...]


class SwapError(ValueError):
    """The swap cannot be done as asked, or its child would not hold the
    chosen norm everywhere; the message names the layers and the fix."""


@dataclass
class SwapResult:
    """What :func:`swap_norm` did.

    Attributes:
        norm: the norm set.
        base: the ``_base_`` of the child.
        text: the child config.
        before: norm layers of the parent's model per part
            (:func:`~ssn_norm.apis.norms.count_norms`).
        after: the same of the child's model.
        changes: one line per edit of the model, e.g.
            ``model.backbone.norm_eval: True -> False``.
        recipe: one line per recipe piece added.
        out: the file written, if any.
    """
    norm: str
    base: str
    text: str
    before: Dict[str, Any]
    after: Dict[str, Any]
    changes: List[str] = field(default_factory=list)
    recipe: List[str] = field(default_factory=list)
    out: Optional[str] = None

    def summary(self) -> str:
        """The report the tool prints: layers per part, before -> after,
        then the edits and the recipe."""
        lines = [
            f'norm layers of the built model, before -> after '
            f'({self.norm}):',
            census_table(self.before, self.after), 'model edits:'
        ]
        lines += [f'  {change}' for change in self.changes]
        lines.append('recipe:')
        lines += [f'  {piece}' for piece in self.recipe]
        return '\n'.join(lines)


def repo_root() -> str:
    """The checkout this package is imported from (installed editable)."""
    return osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def recipe_pieces() -> Config:
    """The project's recipe pieces (``custom_imports``,
    ``sn_paramwise_cfg``, ``ssn_optim_wrapper``, ``sn_custom_hooks``,
    ``ssn_custom_hooks``, ``sn_default_hooks``), read from :data:`RECIPE_FILE`.

    Raises:
        FileNotFoundError: the package is not imported from a checkout.
    """
    path = osp.join(repo_root(), RECIPE_FILE)
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{path}: the recipe file is missing; swap_norm needs '
            'ssn_norm imported from a checkout of the repository '
            '(bash tools/install.sh installs it editable)')
    return Config.fromfile(path)


# ------------------------------------------------------------ config paths
def _node(tree: Any, path: Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _owner(model_cfg: ConfigDict, module_path: str) -> Path:
    """The path (keys and list indices under ``model``) of the deepest
    model dict on the way to ``module_path``: the dict that builds it."""
    node, path = model_cfg, ()
    for token in module_path.split('.'):
        if isinstance(node, dict) and isinstance(
                node.get(token), (dict, list)):
            key: Any = token
        elif (isinstance(node, list) and token.isdigit()
              and int(token) < len(node)):
            key = int(token)
        else:
            break
        node, path = node[key], path + (key, )
    while path and not isinstance(node, dict):  # a list: its holder
        path = path[:-1]
        node = _node(model_cfg, path)
    return path


def _norm_cfg_paths(tree: Any, path: Path = ()) -> List[Path]:
    """Every dict under ``tree`` with a ``norm_cfg`` that is not None."""
    found = []
    if isinstance(tree, dict):
        if tree.get('norm_cfg') is not None:
            found.append(path)
        for key, value in tree.items():
            if key != 'norm_cfg':
                found += _norm_cfg_paths(value, path + (key, ))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found += _norm_cfg_paths(value, path + (index, ))
    return found


def _module_at(model: nn.Module, path: Path) -> Optional[nn.Module]:
    name = '.'.join(str(key) for key in path)
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        return None


def _text(path: Path) -> str:
    out = 'model'
    for key in path:
        out += f'[{key}]' if isinstance(key, int) else f'.{key}'
    return out


# ------------------------------------------------------------- the edits
def _edit_model(cfg: Config, model: nn.Module, norm: str,
                keep_frozen_stages: bool,
                changes: List[str]) -> Tuple[Dict[Path, dict], bool]:
    """``{owner path: {key: new value}}`` for the model config, and
    whether the exact-inflation backbone is used."""
    owners = [_owner(cfg.model, name) for name, _ in norm_layers(model)]
    if not owners:
        raise SwapError(
            'the built model has no normalisation layer; there is nothing '
            'to swap')
    owners += _norm_cfg_paths(cfg.model)
    edits: Dict[Path, dict] = {}
    exact_inflation = False
    for path in dict.fromkeys(owners):
        node = _node(cfg.model, path)
        module = _module_at(model, path)
        new = dict(type=norm, requires_grad=True)
        edit = {'norm_cfg': new}
        old = node.get('norm_cfg')
        changes.append(f'{_text(path)}.norm_cfg: '
                       f'{_inline(old) if old else "(class default)"} -> '
                       f'{_inline(new)}')
        norm_eval = node.get('norm_eval', getattr(module, 'norm_eval', None))
        if norm_eval:
            edit['norm_eval'] = False
            changes.append(f'{_text(path)}.norm_eval: True -> False')
        frozen = node.get('frozen_stages',
                          getattr(module, 'frozen_stages', None))
        if isinstance(frozen, int) and frozen >= 0 and not keep_frozen_stages:
            edit['frozen_stages'] = -1
            changes.append(f'{_text(path)}.frozen_stages: {frozen} -> -1')
        if _upstream_inflation(module):
            from ..convert.inflate_i3d import (DEFAULT_ALLOW_MISSING,
                                               SWITCHABLE_STATE)
            edit['type'] = 'ResNet3dExactInflate'
            edit['inflate_allow_missing'] = list(DEFAULT_ALLOW_MISSING +
                                                 SWITCHABLE_STATE)
            exact_inflation = True
            changes.append(
                f'{_text(path)}.type: {node.get("type")} -> '
                'ResNet3dExactInflate (upstream inflation raises KeyError '
                "on SN's ratio logits; these start from their init)")
        edits[path] = edit
    return edits, exact_inflation


def _upstream_inflation(module: Optional[nn.Module]) -> bool:
    """mmaction2's own ``ResNet3d`` set to inflate a 2-D checkpoint."""
    try:
        from mmaction.models.backbones.resnet3d import ResNet3d
    except ImportError:
        return False
    if not isinstance(module, ResNet3d) or not module.pretrained2d:
        return False
    return (bool(module.pretrained)
            and type(module).__name__ != 'ResNet3dExactInflate')


def _model_delta(cfg: Config, edits: Dict[Path, dict]) -> dict:
    """The child's ``model``: only the edited keys of nested dicts
    (``_delete_`` on each replaced ``norm_cfg``); a list holding an edit is
    written whole, as mmengine replaces lists."""
    edited = cfg.model.to_dict()
    for path, edit in edits.items():
        _node(edited, path).update(edit)
    delta: dict = {}
    for path, edit in edits.items():
        list_at = next(
            (i for i, key in enumerate(path) if isinstance(key, int)), None)
        if list_at is not None:  # the whole list, as edited
            holder = delta
            for key in path[:list_at - 1]:
                holder = holder.setdefault(key, {})
            key = path[list_at - 1]
            holder[key] = _node(edited, path[:list_at])
            continue
        holder = delta
        for key in path:
            holder = holder.setdefault(key, {})
        for key, value in edit.items():
            if key == 'norm_cfg' and isinstance(
                    _node(cfg.model, path).get('norm_cfg'), dict):
                # replace the parent's norm, do not merge into it; where
                # the parent has none, mmengine would keep the key
                value = dict(_delete_=True, **value)
            holder[key] = value
    return delta


def _recipe(cfg: Config, norm: str, exact_inflation: bool,
            recipe: List[str]) -> Dict[str, Any]:
    """The top-level keys the child sets besides ``model``."""
    pieces = recipe_pieces()
    keys: Dict[str, Any] = {}
    imports = dict(cfg.get('custom_imports') or {})
    wanted = list(imports.get('imports') or [])
    for module in ['ssn_norm'] + (['ssn_norm.convert.inflate_i3d']
                                  if exact_inflation else []):
        if module not in wanted:
            wanted.append(module)
    if wanted != list(imports.get('imports') or []):
        keys['custom_imports'] = dict(
            imports=wanted, allow_failed_imports=False)
        recipe.append(f'custom_imports: {", ".join(wanted)}')
    sparse = norm in ('SSN', 'SyncSSN')
    optim = cfg.get('optim_wrapper') or {}
    if sparse:
        wrapper = dict(pieces.ssn_optim_wrapper.to_dict())
        kind = optim.get('type', 'OptimWrapper')
        if kind not in _OPTIM_WRAPPERS:
            raise SwapError(
                f'optim_wrapper.type={kind!r}: SSN clips its ratio '
                'gradients with RatioClipOptimWrapper, which knows '
                f'{", ".join(_OPTIM_WRAPPERS)}; set one of them')
        wrapper['type'] = _OPTIM_WRAPPERS[kind]
        recipe.append(
            f'optim_wrapper: {wrapper["type"]}, ratio logits at lr x0.1, no '
            'weight decay, their gradient norm clipped to '
            f'{wrapper["ratio_clip_grad"]["max_norm"]}')
    else:
        wrapper = dict(paramwise_cfg=pieces.sn_paramwise_cfg.to_dict())
        recipe.append('optim_wrapper.paramwise_cfg: no weight decay on the '
                      'ratio logits (mean_weight, var_weight)')
    if optim.get('constructor') not in _CONSTRUCTORS:
        raise SwapError(
            f'optim_wrapper.constructor={optim.get("constructor")!r}: the '
            'ratio-logit rule needs the default constructor (or '
            'SwitchableOptimWrapperConstructor); merge the rule into your '
            "constructor's paramwise_cfg by hand")
    keys['optim_wrapper'] = wrapper
    hooks = list(cfg.get('custom_hooks') or [])
    types = {hook.get('type') for hook in hooks}
    needed = pieces.ssn_custom_hooks if sparse else pieces.sn_custom_hooks
    added = [
        hook.to_dict() for hook in needed if hook.type not in types and (
            hook.type != 'SyncNormStatsHook' or not norm.startswith('Sync'))
    ]
    if added:
        keys['custom_hooks'] = [dict(hook) for hook in hooks] + added
        recipe.append('custom_hooks: + ' + ', '.join(h['type'] for h in added))
    # The paper's test statistics, as in every SN config of ours; merged by
    # mmengine into the parent's default_hooks.
    if 'batch_stats' not in (cfg.get('default_hooks') or {}):
        keys['default_hooks'] = pieces.sn_default_hooks.to_dict()
        recipe.append('default_hooks.batch_stats: BatchStatsHook, tests '
                      'with batch-average statistics (the paper\'s '
                      'protocol)')
    return keys


# ----------------------------------------------------------- the output
def _inline(value: Any) -> str:
    """``value`` as config source on one line (dicts as ``dict(...)``)."""
    if isinstance(value, dict):
        items = ', '.join(
            f'{k}={_inline(v)}' if isinstance(k, str) and k.isidentifier() else
            f'**{{{k!r}: {_inline(v)}}}' for k, v in value.items())
        return f'dict({items})'
    if isinstance(value, list):
        return '[' + ', '.join(_inline(v) for v in value) + ']'
    if isinstance(value, tuple):
        inner = ', '.join(_inline(v) for v in value)
        return f'({inner},)' if len(value) == 1 else f'({inner})'
    return repr(value)


def _source(value: Any,
            indent: int,
            column: int,
            tail: int = 0,
            width: int = 79) -> str:
    """``value`` as config source starting at ``column`` and followed by
    ``tail`` characters on its last line; a dict or list that would pass
    ``width`` (the project's 79 columns) gets one item per line, indented
    by 4 from ``indent``, the block's own indentation."""
    flat = _inline(value)
    if column + len(flat) + tail <= width or not isinstance(
            value, (dict, list, tuple)):
        return flat
    inner = indent + 4
    items = list(value.items()) if isinstance(
        value, dict) else [(None, v) for v in value]
    parts = []
    for index, (key, item) in enumerate(items):
        last = index == len(items) - 1
        prefix = '' if key is None else f'{key}='
        parts.append(prefix + _source(item, inner, inner + len(prefix), tail +
                                      1 if last else 1, width))
    if isinstance(value, dict):
        opening, closing = 'dict(', ')'
    else:
        opening, closing = ('[', ']') if isinstance(value, list) else ('(',
                                                                       ')')
    pad = ' ' * inner
    return opening + '\n' + ',\n'.join(pad + p for p in parts) + closing


def _render(base: str, norm: str, summary: str, keys: Dict[str, Any]) -> str:
    from ..version import __version__
    lines = [
        f'# Written by tools/swap_norm.py (ssn-norm {__version__}): the '
        f'model of _base_', f'# with {norm} everywhere it normalises.'
    ]
    for line in summary.splitlines():
        indent = ' ' * (len(line) - len(line.lstrip()) + 5)
        lines += textwrap.wrap(
            line, 79, initial_indent='# ',
            subsequent_indent='#' + indent) or ['#']
    lines.append(f'_base_ = {base!r}')
    for key, value in keys.items():
        lines.append(f'{key} = {_source(value, 0, len(key) + 3)}')
    return '\n'.join(lines) + '\n'


def _base_reference(config: str) -> str:
    """What the child's ``_base_`` says: an ``mmdet::``-style name as
    given, a file by its absolute path (the child may live anywhere)."""
    if not osp.isfile(config) and '::' in config:
        return config
    return osp.abspath(config)


def _build(cfg: Config) -> nn.Module:
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(cfg.get('default_scope') or 'mmengine')
    return MODELS.build(cfg.model)


def _verify(model: nn.Module, norm: str, keep_frozen_stages: bool) -> None:
    """Raises :class:`SwapError` unless every norm layer of ``model`` is
    exactly ``norm`` and (unless ``keep_frozen_stages``) trainable."""
    wrong = [(name, type(m).__name__) for name, m in norm_layers(model)
             if type(m) is not SWAP_NORMS[norm]]
    frozen = [] if keep_frozen_stages else [
        name for name, m in norm_layers(model) if not is_trainable(m)
    ]
    if not wrong and not frozen:
        return
    listed = ', '.join(f'{name} ({kind})' for name, kind in wrong[:6])
    problems = []
    if wrong:
        problems.append(
            f'{len(wrong)} norm layers are not {norm}: {listed}'
            f'{", ..." if len(wrong) > 6 else ""}; their module does not '
            'take its norm from a norm_cfg of the dict that builds it')
    if frozen:
        problems.append(f'{len(frozen)} norm layers stay frozen: '
                        f'{", ".join(frozen[:6])}')
    raise SwapError('the swapped config would not hold ' + norm +
                    ' everywhere: ' + '; '.join(problems) +
                    '. Set these layers by hand in a child config')


def swap_norm(config: str,
              norm: str,
              out: Optional[str] = None,
              keep_frozen_stages: bool = False) -> SwapResult:
    """A child config of ``config`` whose built model normalises with
    ``norm`` everywhere (see the module docstring).

    Args:
        config: a config file, or an upstream one as
            ``mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py`` (also
            ``mmseg::``, ``mmaction::``).
        norm: one of :data:`SWAP_NORMS`.
        out: where to write the child; None writes nothing.
        keep_frozen_stages: keep the parent's ``frozen_stages`` (their
            norm layers then stay frozen and are not checked).

    Returns:
        The child's text and what changed, counted on both built models.

    Raises:
        SwapError: ``norm`` unknown, the model has no norm layer, a layer
            of the child is not ``norm`` or not trainable, or the
            optimiser cannot take the ratio-logit rule; nothing is
            written then.
        FileNotFoundError: ``config`` does not exist.
    """
    if norm not in SWAP_NORMS:
        raise SwapError(f'norm must be one of {", ".join(SWAP_NORMS)}, got '
                        f'{norm!r}')
    import ssn_norm  # noqa: F401  registers the layers, hooks and wrappers
    resolve_config(config)
    cfg = load_config(config)
    model = _build(cfg)
    before = count_norms(model)
    changes: List[str] = []
    recipe: List[str] = []
    edits, exact_inflation = _edit_model(cfg, model, norm, keep_frozen_stages,
                                         changes)
    del model
    keys = dict(model=_model_delta(cfg, edits))
    keys.update(_recipe(cfg, norm, exact_inflation, recipe))
    base = _base_reference(config)
    result = SwapResult(norm, base, '', before, {}, changes, recipe)
    folder = osp.dirname(osp.abspath(out)) if out else None
    if folder:
        os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        draft = osp.join(tmp, osp.basename(out) if out else 'child.py')
        with open(draft, 'w', encoding='utf-8') as f:
            f.write(_render(base, norm, '', keys))
        child = _build(Config.fromfile(draft))
        result.after = count_norms(child)
        _verify(child, norm, keep_frozen_stages)
        del child
        result.text = _render(base, norm, result.summary(), keys)
        if out:
            with open(draft, 'w', encoding='utf-8') as f:
                f.write(result.text)
            os.replace(draft, out)
            result.out = out
    return result
