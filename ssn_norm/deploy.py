"""Deployment: frozen SSN (and hardened SN) layers → plain PyTorch modules.

Once every SSN layer has frozen its mean and variance ratios to one-hot
vectors, each layer is one fixed normaliser and the switchable machinery is
dead weight.  :func:`deploy_switchable_norms` replaces each such layer, in
place, by

* its BN choice (mean and variance from the running statistics): an affine
  map, **folded into the preceding convolution** where the network's
  structure guarantees that the convolution feeds only this norm
  (``nn.Sequential`` neighbours, mmcv ``ConvModule`` with ``conv`` directly
  before ``norm``, ResNet blocks' ``convK`` → ``normK``), otherwise an
  eval-mode ``nn.BatchNorm{1,2,3}d``;
* any other choice (IN, LN or a mixed pair such as mean IN / variance BN):
  a small ``torch.fx.GraphModule`` that computes exactly the statistics the
  layer selected, traced from the layer's own definition
  (:mod:`ssn_norm.ops.moments`), so it needs no ``ssn_norm`` to run.
  torch's own ``InstanceNorm``/``LayerNorm`` do not fit: SN's IN variance
  is unbiased (Bessel-corrected, 0 for a single element) and its LN
  moments are derived from the IN moments, so they would differ by up to
  ``L/(L-1)`` in the variance.

:func:`save_deployed` writes the result as data only (state dict and the
list of replacements, readable with ``torch.load(weights_only=True)``);
:func:`rebuild_deployed` redoes the replacements on a freshly built model.
The mmengine drivers (build the model from a config, load a checkpoint)
are :func:`ssn_norm.apis.deploy_checkpoint` and
:func:`ssn_norm.apis.load_deployed`.

SN layers (softmax ratios, never one-hot) and SSN layers whose ratios are
not one-hot are replaced only when hardening is requested: each takes the
normaliser of its largest ratio, which changes the outputs.
"""
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.fx as fx
from torch import Tensor, nn

from .compat import _weights_only_reason
from .layers.switchable_norm import SSN, SwitchableNormBase
from .ops import moments
from .ops.sparsestmax import is_one_hot
from .utils import switchable_norms, unwrap_model

HARDEN_CHOICES = ('none', 'sn', 'all')
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


@dataclass
class DeployedLayer:
    """One replaced layer.

    Attributes:
        name: the layer's module path.
        mean: normaliser of the mean (``'IN'``, ``'LN'``, ``'BN'``,
            ``'GN'``); for a group SN layer whose channel groups chose
            differently, one name per group joined by commas
            (``'IN,BN'``).
        var: normaliser of the variance, as ``mean``.
        replacement: what took its place, e.g. ``'folded into conv1'``,
            ``'BatchNorm2d'`` or ``'SwitchedNorm(mean=IN, var=LN)'``.
        hardened: True when the choice came from hardening (outputs change).
    """
    name: str
    mean: str
    var: str
    replacement: str
    hardened: bool


class SwitchedNorm(nn.Module):
    """The normaliser a one-hot SN layer computes, nothing else.

    The layer's frozen selection (:func:`ssn_norm.ops.moments.factors`):
    only the chosen members' statistics, computed in
    ``promote_types(dtype, float32)``.  Meant to be traced with
    :func:`torch.fx.symbolic_trace`: the choice is fixed at construction,
    so the forward has no data-dependent branch.

    Args:
        layer: the SN / SSN layer to copy ``weight``, ``bias``, ``eps`` and
            (if a choice is BN) the running statistics from.
        mean: one of the layer's normalizers (``'IN'``, ``'LN'``, ``'BN'``,
            ``'GN'``), or for a group layer one per channel group joined
            by commas (``'IN,BN'``: group g takes the g-th).
        var: as ``mean``.
    """

    def __init__(self, layer: SwitchableNormBase, mean: str, var: str) -> None:
        super().__init__()
        groups = getattr(layer, 'num_groups', 1)
        per_group = []
        for choice in (mean, var):
            names = choice.split(',')
            if len(names) not in (1, groups) or any(
                    name not in layer.normalizers for name in names):
                raise ValueError(
                    f'choice must be one of the layer\'s normalizers '
                    f'{layer.normalizers}, or one per channel group '
                    f'({groups}) joined by commas, got {choice!r}')
            per_group.append(names)
        self.mean, self.var, self.eps = mean, var, layer.eps
        self.gn_groups = layer.gn_groups
        # The chosen members, in order: one choice per statistic is the
        # layer's frozen selection; where channel groups differ, both
        # statistics mix with one-hot ratios per channel (exact), the
        # buffers mask_<statistic>_<member> (1 on the channels of the
        # groups that chose the member) where a statistic's groups differ.
        chosen = tuple(dict.fromkeys(per_group[0] + per_group[1]))
        self._table = moments.member_table(chosen, self.gn_groups)
        self._selected = tuple(chosen.index(names[0]) for names in per_group)
        self._masks = []
        if any(len(set(names)) > 1 for names in per_group):
            self._selected = None
            for statistic, names in zip(('mean', 'var'), per_group):
                keys = []
                for member in chosen:
                    mask = torch.tensor([
                        float(names[c * len(names) //
                                    layer.num_features] == member)
                        for c in range(layer.num_features)
                    ]).to(layer.weight)
                    key = f'mask_{statistic}_{member}'
                    self.register_buffer(
                        key, mask, persistent=len(set(names)) > 1)
                    keys.append(key)
                self._masks.append(keys)
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = nn.Parameter(layer.bias.detach().clone())
        if any(m.batch for m in self._table):
            self.register_buffer('running_mean',
                                 layer.running_mean.detach().clone())
            self.register_buffer('running_var',
                                 layer.running_var.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        running = None
        if hasattr(self, 'running_mean'):
            running = (self.running_mean, self.running_var)
        spec = moments.MomentSpec(self._table, False, self.eps, running,
                                  self._selected)
        ratios = None
        if self._selected is None:
            ratios = torch.stack([
                torch.stack([getattr(self, key) for key in keys])
                for keys in self._masks
            ])
        out, _ = moments.normalize_reference(
            x.flatten(2), self.weight, self.bias, ratios, spec)
        return out.view_as(x)


def switched_norm(layer: SwitchableNormBase, mean: str,
                  var: str) -> fx.GraphModule:
    """:class:`SwitchedNorm` traced into a GraphModule (pickles as code).

    The module keeps ``mean``, ``var`` and ``eps`` as attributes.
    """
    module = SwitchedNorm(layer, mean, var)
    graph = fx.Tracer().trace(module)
    graph = fx.Tracer().trace(module)
    traced = fx.GraphModule(module, graph, class_name='SwitchedNorm')
    traced.mean, traced.var, traced.eps = mean, var, module.eps
    # torch.fx reads this entry back when unpickling; keeps the name.
    traced._graphmodule_cls_name = 'SwitchedNorm'
    return traced


#: A layer's choice for one statistic: a member index, or for a group
#: layer whose channel groups chose differently one index per group.
Choice = Union[int, Tuple[int, ...]]


def _argmax(values: Tensor) -> Choice:
    """Index of the largest entry of (K,), or per row of (G, K) (one int
    where every row agrees)."""
    found = values.reshape(-1, values.shape[-1]).argmax(-1).tolist()
    return found[0] if len(set(found)) == 1 else tuple(found)


def layer_choice(layer: SwitchableNormBase,
                 harden: bool = False) -> Optional[Tuple[Choice, Choice]]:
    """``(mean_idx, var_idx)`` the layer computes, or None if not one-hot.

    An SSN layer is one-hot when both ratios are frozen (``mean_fixed``,
    ``var_fixed``; the choice is then the logits' argmax, as in the layer)
    or its SparsestMax ratios are one-hot within
    :data:`~ssn_norm.ops.ONE_HOT_TOL`.  With ``harden`` any layer yields the
    argmax of its current ratios.  A group layer (``num_groups > 1``) is
    one-hot when every group is; its index is one int where all groups
    agree, else a tuple with each group's.
    """
    if isinstance(layer, SSN) and bool(layer.frozen.all()):
        return _argmax(layer.mean_weight), _argmax(layer.var_weight)
    mean_ratio, var_ratio = layer.ratios()
    if isinstance(layer, SSN) and bool(is_one_hot(mean_ratio).all()) and bool(
            is_one_hot(var_ratio).all()):
        return _argmax(mean_ratio), _argmax(var_ratio)
    if harden:
        return _argmax(mean_ratio), _argmax(var_ratio)
    return None


def choice_names(layer: SwitchableNormBase, choice: Choice) -> str:
    """A :data:`Choice` as :class:`SwitchedNorm` takes it: the member's
    name, or the groups' names joined by commas."""
    if isinstance(choice, int):
        return layer.normalizers[choice]
    return ','.join(layer.normalizers[index] for index in choice)


def _conv_before_norm(model: nn.Module) -> Dict[str, Tuple[str, nn.Module]]:
    """``{norm path: (conv path, conv)}`` where the conv feeds only it."""
    pairs = {}

    def add(norm_path: str, conv_path: str, conv: nn.Module,
            norm: nn.Module) -> None:
        if (isinstance(norm, SwitchableNormBase) and isinstance(conv, _CONVS)
                and conv.out_channels == norm.num_features):
            pairs[norm_path] = (conv_path, conv)

    for path, module in model.named_modules():
        prefix = path + '.' if path else ''
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (conv_name, conv), (norm_name,
                                    norm) in zip(children, children[1:]):
                add(prefix + norm_name, prefix + conv_name, conv, norm)
        # mmcv ConvModule: forward applies the layers in ``order``.
        order = getattr(module, 'order', None)
        norm_name = getattr(module, 'norm_name', None)
        if (isinstance(order, tuple) and isinstance(norm_name, str)
                and 'conv' in order and 'norm' in order
                and order.index('norm') == order.index('conv') + 1
                and isinstance(getattr(module, 'conv', None), nn.Module)):
            add(prefix + norm_name, prefix + 'conv', module.conv,
                getattr(module, norm_name, None))
        # OpenMMLab ResNet stems and blocks: convK → normK (``normK_name``).
        for k in (1, 2, 3):
            norm_name = getattr(module, f'norm{k}_name', None)
            conv = getattr(module, f'conv{k}', None)
            if isinstance(norm_name, str) and conv is not None:
                add(prefix + norm_name, f'{prefix}conv{k}', conv,
                    getattr(module, norm_name, None))
    return pairs


@torch.no_grad()
def _fold(conv: nn.Module, scale: Tensor, shift: Tensor) -> None:
    """conv ← scale · conv + shift, per output channel (float64 math)."""
    weight = conv.weight.double()
    view = (-1, ) + (1, ) * (weight.dim() - 1)
    new_weight = weight * scale.view(view)
    bias = conv.bias.double() if conv.bias is not None else 0
    new_bias = bias * scale + shift
    conv.weight.copy_(new_weight.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(
            new_bias.to(conv.weight.dtype),
            requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(new_bias.to(conv.bias.dtype))


def _bn_affine(layer: SwitchableNormBase) -> Tuple[Tensor, Tensor]:
    """Eval BN of the layer as ``y = x * scale + shift`` (float64)."""
    _, scale, shift = moments.scale_shift(layer.running_mean.double(),
                                          layer.running_var.double(),
                                          layer.weight.double(),
                                          layer.bias.double(), layer.eps)
    return scale, shift


def _batch_norm(layer: SwitchableNormBase, spatial_dims: int) -> nn.Module:
    bn = _BATCH_NORMS[spatial_dims](layer.num_features, eps=layer.eps)
    with torch.no_grad():
        bn.weight.copy_(layer.weight)
        bn.bias.copy_(layer.bias)
        bn.running_mean.copy_(layer.running_mean)
        bn.running_var.copy_(layer.running_var)
    bn.to(device=layer.weight.device, dtype=layer.weight.dtype)
    return bn.eval()


def _tensors(output: Any) -> List[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return []


def _default_check_forward(model: nn.Module, inputs: Tensor) -> Any:
    module = unwrap_model(model)
    if hasattr(module, 'extract_feat'):
        return module.extract_feat(inputs)
    return model(inputs)


@torch.no_grad()
def deploy_switchable_norms(model: nn.Module,
                            harden: str = 'none',
                            fold: bool = True,
                            spatial_dims: int = 2,
                            strict: bool = True,
                            check_input: Optional[Tensor] = None,
                            check_forward: Optional[Callable[
                                [nn.Module, Tensor], Any]] = None,
                            atol: float = 1e-5) -> List[DeployedLayer]:
    """Replaces one-hot SN-family layers of ``model`` by plain modules.

    The model is put in eval mode and modified in place.

    Args:
        model: the trained network.
        harden: ``'none'``: only SSN layers whose ratios are one-hot;
            ``'sn'``: also SN / SyncSN layers, by the argmax of their
            ratios; ``'all'``: also SSN layers that are not yet one-hot.
        fold: fold BN choices into the preceding conv where that is exact.
        spatial_dims: dimensions after (N, C) of the input of BN choices
            that cannot be folded: 2 → ``BatchNorm2d`` (images), 3 →
            ``BatchNorm3d`` (video), 1 → ``BatchNorm1d``.
        strict: raise if a switchable layer would remain (the saved model
            would then need ``ssn_norm``); False leaves such layers.
        check_input: if given, the outputs of ``check_forward(model,
            check_input)`` (default: ``extract_feat`` if the model has it,
            else ``model(check_input)``) must not change by more than
            ``atol`` (plus ``atol`` relative) for layers that were not
            hardened; raises RuntimeError otherwise (the model is then
            already modified).
        atol: tolerance of the check.

    Returns:
        One :class:`DeployedLayer` per replaced layer.

    Raises:
        ValueError: bad arguments, or (``strict``) layers that are not
            one-hot, listed with the fix.
    """
    if harden not in HARDEN_CHOICES:
        raise ValueError(
            f'harden must be one of {HARDEN_CHOICES}, got {harden!r}')
    if spatial_dims not in _BATCH_NORMS:
        raise ValueError(
            f'spatial_dims must be 1, 2 or 3, got {spatial_dims!r}')
    model.eval()
    check_forward = check_forward or _default_check_forward
    reference = None
    if check_input is not None:
        reference = _tensors(check_forward(model, check_input))

    plan, remaining = [], []
    for name, layer in switchable_norms(model):
        wants_harden = harden == 'all' or (harden == 'sn'
                                           and not isinstance(layer, SSN))
        choice = layer_choice(layer, harden=wants_harden)
        if choice is None:
            remaining.append(name)
            continue
        exact = layer_choice(layer, harden=False) is not None
        plan.append((name, layer, choice, not exact))
    if remaining and strict:
        listed = ', '.join(
            remaining[:8]) + (', ...' if len(remaining) > 8 else '')
        raise ValueError(
            f'{len(remaining)} switchable layers are not one-hot ({listed}): '
            'SN layers need harden="sn" (--harden sn), SSN layers that have '
            'not frozen need more training at radius >= 0.8165 or '
            'harden="all"; both change the outputs')

    root = unwrap_model(model)
    convs = _conv_before_norm(root) if fold else {}
    used_convs = set()
    deployed = []
    for name, layer, (mean_idx, var_idx), hardened in plan:
        mean = choice_names(layer, mean_idx)
        var = choice_names(layer, var_idx)
        if (mean, var) == ('BN', 'BN'):
            conv_path, conv = convs.get(name, (None, None))
            if conv is not None and id(conv) not in used_convs:
                used_convs.add(id(conv))
                _fold(conv, *_bn_affine(layer))
                replacement, description = nn.Identity(), (
                    f'folded into {conv_path}')
            else:
                replacement = _batch_norm(layer, spatial_dims)
                description = type(replacement).__name__
        else:
            replacement = switched_norm(layer, mean, var)
            description = f'SwitchedNorm(mean={mean}, var={var})'
        parent_path, _, attr = name.rpartition('.')
        parent = root.get_submodule(parent_path) if parent_path else root
        setattr(parent, attr, replacement)
        deployed.append(DeployedLayer(name, mean, var, description, hardened))
    model.eval()

    if reference is not None:
        outputs = _tensors(check_forward(model, check_input))
        exact = not any(d.hardened for d in deployed)
        if exact:
            for index, (ref, out) in enumerate(zip(reference, outputs)):
                error = (out - ref).abs().max().item() if ref.numel() else 0
                limit = atol + atol * ref.abs().max().item()
                if not error <= limit:
                    raise RuntimeError(
                        f'deployed output {index} differs by {error:.3g} '
                        f'(> {limit:.3g}); retry with fold=False '
                        '(--no-fold) and report the model')
    return deployed


def assert_plain(model: nn.Module) -> None:
    """Raises ValueError if ``model`` still holds ``ssn_norm`` modules (the
    deployment is then incomplete: switchable machinery is left)."""
    left = [
        name for name, module in model.named_modules()
        if type(module).__module__.split('.')[0] == 'ssn_norm'
    ]
    if left:
        raise ValueError(
            f'{len(left)} modules still need ssn_norm: '
            f'{", ".join(left[:8])}{", ..." if len(left) > 8 else ""}')


#: ``meta['format']`` of files written by :func:`save_deployed`.
DEPLOYED_FORMAT = 'ssn-norm-deployed/1'
_PLAIN = (str, int, float, bool, type(None))


def deployment_plan(deployed: List[DeployedLayer]) -> List[Dict[str, Any]]:
    """What :func:`rebuild_deployed` needs to redo the replacements, as
    plain data (strings, numbers, None; loadable with
    ``torch.load(weights_only=True)``).

    Each entry has ``name``, ``mean``, ``var``, ``hardened`` and ``kind``:
    ``'folded'`` (``conv``: the conv it was folded into), ``'batch_norm'``
    (``spatial_dims``) or ``'switched'``.

    Raises:
        ValueError: a replacement this module does not produce.
    """
    plan = []
    for layer in deployed:
        entry = dict(
            name=layer.name,
            mean=layer.mean,
            var=layer.var,
            hardened=layer.hardened,
            kind='',
            conv=None,
            spatial_dims=None)
        text = layer.replacement
        if text.startswith('folded into '):
            entry.update(kind='folded', conv=text[len('folded into '):])
        elif text in {f'BatchNorm{d}d' for d in _BATCH_NORMS}:
            entry.update(kind='batch_norm', spatial_dims=int(text[-2]))
        elif text == f'SwitchedNorm(mean={layer.mean}, var={layer.var})':
            entry.update(kind='switched')
        else:
            raise ValueError(
                f'{layer.name}: unknown replacement {text!r}; expected '
                "'folded into <conv>', 'BatchNorm{1,2,3}d' or "
                "'SwitchedNorm(mean=.., var=..)'")
        plan.append(entry)
    return plan


@torch.no_grad()
def rebuild_deployed(model: nn.Module, plan: List[Dict[str, Any]]) -> None:
    """Redoes the module replacements of ``plan`` on a freshly built
    ``model`` (the config's, with its switchable layers), so that it takes
    the deployed state dict with ``load_state_dict(strict=True)``.

    Only the structure is rebuilt: replacements hold the fresh layers'
    values until the state dict is loaded.  A conv that a BN choice was
    folded into gets a bias if it had none, as folding gave it one.

    Raises:
        ValueError: a plan entry that does not fit ``model`` (no switchable
            layer or no conv at the named path, an unknown kind).
    """
    root = unwrap_model(model)
    for entry in plan:
        name, kind = entry['name'], entry['kind']
        try:
            layer = root.get_submodule(name)
        except AttributeError:
            layer = None
        if not isinstance(layer, SwitchableNormBase):
            raise ValueError(
                f'{name}: the deployed file replaced a switchable norm '
                f'here, but the model has {type(layer).__name__}; build '
                'the model from the config (and --cfg-options) it was '
                'deployed from')
        if kind == 'folded':
            conv = root.get_submodule(entry['conv'])
            if not isinstance(conv, _CONVS):
                raise ValueError(f"{entry['conv']}: expected the conv "
                                 f'{name} was folded into, got '
                                 f'{type(conv).__name__}')
            if conv.bias is None:
                conv.bias = nn.Parameter(
                    conv.weight.new_zeros(conv.out_channels),
                    requires_grad=conv.weight.requires_grad)
            replacement = nn.Identity()
        elif kind == 'batch_norm':
            replacement = _batch_norm(layer, entry['spatial_dims'])
        elif kind == 'switched':
            replacement = switched_norm(layer, entry['mean'], entry['var'])
        else:
            raise ValueError(f'{name}: unknown kind {kind!r}; expected '
                             "'folded', 'batch_norm' or 'switched'")
        parent_path, _, attr = name.rpartition('.')
        parent = root.get_submodule(parent_path) if parent_path else root
        setattr(parent, attr, replacement)
    model.eval()


def _check_plain(value: Any, where: str) -> None:
    """Raises ValueError unless ``value`` is plain data (what
    ``torch.load(weights_only=True)`` reads back without allow-lists)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, where)
            _check_plain(item, f'{where}[{key!r}]')
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f'{where}[{index}]')
    elif not isinstance(value, _PLAIN):
        raise ValueError(f'{where} is a {type(value).__name__}; only '
                         'dicts, lists, tuples, strings, numbers, bools '
                         'and None can be saved for weights_only loading')


def save_deployed(model: nn.Module,
                  path: str,
                  deployed: List[DeployedLayer],
                  config: Optional[str] = None,
                  cfg_options: Optional[dict] = None) -> None:
    """Writes the deployed model as data only: ``{'state_dict': ...,
    'meta': {'format', 'deployed' (:func:`deployment_plan`), 'config',
    'cfg_options', 'ssn_norm_version'}}``.

    The file loads with ``torch.load(path, weights_only=True)`` (tensors
    and plain data, nothing that runs code);
    :func:`ssn_norm.apis.load_deployed` rebuilds the module from the config
    it was deployed from.  ``model`` must hold
    no switchable layer any more (:func:`assert_plain`).

    Raises:
        ValueError: switchable layers remain, or ``cfg_options`` holds
            values other than plain data.
    """
    from .version import __version__
    module = unwrap_model(model)
    assert_plain(module)
    meta = dict(
        format=DEPLOYED_FORMAT,
        deployed=deployment_plan(deployed),
        config=config,
        cfg_options=dict(cfg_options) if cfg_options else None,
        ssn_norm_version=__version__)
    _check_plain(meta, 'meta')
    torch.save({'state_dict': module.state_dict(), 'meta': meta}, path)


def read_deployed(path: str) -> Dict[str, Any]:
    """The ``{'state_dict', 'meta'}`` of a :func:`save_deployed` file, read
    with ``torch.load(weights_only=True)`` (no code from the file runs).

    Raises:
        ValueError: the file is not one :func:`save_deployed` wrote (an
            older deployed file, a pickled module, is refused unread).
    """
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f'{path}: holds pickled objects ({_weights_only_reason(error)})'
            '; deployed files of earlier versions were whole pickled '
            'modules, which are not read because unpickling them can run '
            'code: deploy the trained checkpoint again with '
            'tools/deploy_ssn.py') from error
    meta = data.get('meta') if isinstance(data, dict) else None
    found = meta.get('format') if isinstance(meta, dict) else None
    if found != DEPLOYED_FORMAT:
        raise ValueError(
            f'{path}: meta.format is {found!r}, not {DEPLOYED_FORMAT!r}: '
            'not a file written by tools/deploy_ssn.py (files of older '
            'versions, whole pickled modules, are not read; deploy the '
            'trained checkpoint again)')
    return data
