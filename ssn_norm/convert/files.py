"""Reading source checkpoints, checking and writing converted ones."""
import copy
import importlib.util
import os
import os.path as osp
import pickle
from collections import OrderedDict
from typing import Dict, Mapping, Optional

import torch
from torch import Tensor, nn

from ..version import __version__
from .resnet import (ConversionError, check_loadable, convert_resnet,
                     extract_state_dict)

#: ``to`` values of :func:`convert_checkpoint_file`.
FILE_TARGETS = ('sn', 'ssn', 'i3d')


def load_source(path: str,
                trust_pickle: bool = False) -> 'OrderedDict[str, Tensor]':
    """The prefix-free state dict of the checkpoint file ``path``.

    The file is read with ``torch.load(weights_only=True)``, which refuses
    arbitrary pickled objects; ``trust_pickle=True`` falls back to a full
    unpickle for files (e.g. training checkpoints holding logger state) you
    trust.  Raises :class:`ConversionError` naming the file and the reason.
    """
    if not osp.isfile(path):
        raise ConversionError(f'{path}: no such file')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        if 'Weights only load failed' not in str(error):
            raise ConversionError(
                f'{path}: not a PyTorch checkpoint ({error})') from error
        if not trust_pickle:
            raise ConversionError(
                f'{path}: holds pickled objects that '
                'torch.load(weights_only=True) refuses; if you trust the '
                'file, retry with trust_pickle=True (--trust-pickle)'
            ) from error
        try:
            checkpoint = torch.load(
                path, map_location='cpu', weights_only=False)
        except Exception as error2:  # reported with the path
            raise ConversionError(
                f'{path}: not a PyTorch checkpoint '
                f'({type(error2).__name__}: {error2})') from error2
    except Exception as error:  # reported with the path
        raise ConversionError(f'{path}: not a PyTorch checkpoint '
                              f'({type(error).__name__}: {error})') from error
    try:
        return extract_state_dict(checkpoint)
    except ConversionError as error:
        raise ConversionError(f'{path}: {error}') from None


def save_converted(path: str, state_dict: Mapping[str, Tensor],
                   meta: Dict) -> None:
    """Writes ``{'state_dict': ..., 'meta': ...}``, loadable by mmengine's
    ``load_checkpoint`` and ``init_cfg=dict(type='Pretrained', ...)`` (and by
    ``torch.load(weights_only=True)``: only tensors, strings and numbers)."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    torch.save({'state_dict': OrderedDict(state_dict), 'meta': meta}, path)


def backbone_of_config(config: str) -> nn.Module:
    """Builds ``model.backbone`` of an mmdet / mmseg / mmaction config.

    ``init_cfg`` and ``pretrained`` are removed first, so nothing is loaded.
    """
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    import ssn_norm  # noqa: F401  registers SN/SSN, applies compat fixes
    cfg = Config.fromfile(config)
    backbone = copy.deepcopy(cfg.get('model', {}).get('backbone'))
    if backbone is None:
        raise ConversionError(f'{config}: the config has no model.backbone')
    backbone.pop('init_cfg', None)
    backbone.pop('pretrained', None)
    init_default_scope(cfg.get('default_scope') or 'mmengine')
    return MODELS.build(backbone)


def _norm_kind(module: nn.Module) -> Optional[str]:
    from ..layers import SSN
    from ..layers.switchable_norm import _SwitchableNormBase
    kinds = set()
    for layer in module.modules():
        if isinstance(layer, SSN):
            kinds.add('ssn')
        elif isinstance(layer, _SwitchableNormBase):
            kinds.add('sn')
    if len(kinds) > 1:
        raise ConversionError('the backbone mixes SN and SSN layers; '
                              'convert for one of them with --to sn|ssn')
    return kinds.pop() if kinds else None


def convert_checkpoint_file(src: str,
                            dst: str,
                            to: Optional[str] = None,
                            config: Optional[str] = None,
                            trust_pickle: bool = False) -> str:
    """Converts the ResNet checkpoint ``src`` and writes it to ``dst``.

    Args:
        src: source checkpoint (see
            :func:`~ssn_norm.convert.resnet.convert_resnet` for formats).
        dst: output file, ``{'state_dict': ..., 'meta': ...}``.
        to: ``'sn'``, ``'ssn'`` (None: the source's own kind, SN for BN) or
            ``'i3d'``: convert to the 2-D norm of ``config``'s I3D backbone,
            then inflate into that backbone (needs mmaction2 and
            :mod:`ssn_norm.convert.inflate_i3d`).
        config: a config whose ``model.backbone`` the result must load into
            strictly; checked before anything is written.  Required for
            ``'i3d'``.
        trust_pickle: see :func:`load_source`.

    Returns:
        The summary to show the user.

    Raises:
        ConversionError: nothing is written then.
    """
    if to is not None and to not in FILE_TARGETS:
        raise ConversionError(f'to must be one of {FILE_TARGETS}, got {to!r}')
    if osp.abspath(src) == osp.abspath(dst):
        raise ConversionError(f'refusing to overwrite the source {src}')
    if to == 'i3d' and config is None:
        raise ConversionError(
            'to="i3d" needs the I3D config whose backbone to inflate into '
            '(--config)')
    state_dict = load_source(src, trust_pickle)
    backbone = backbone_of_config(config) if config else None
    norm = to
    if to == 'i3d':
        norm = _norm_kind(backbone)
        if norm is None:
            raise ConversionError(
                f'{config}: the backbone has no SN/SSN layer; BN checkpoints '
                'inflate directly with pretrained2d=True')
    try:
        converted, report = convert_resnet(state_dict, norm)
    except ConversionError as error:
        raise ConversionError(f'{src}: {error}') from None
    summary = report.summary()
    meta = {
        'converted_from': osp.basename(src),
        'source_format': report.source_format,
        'source_flavour': report.source_flavour,
        'norm': report.target,
        'arch': report.arch,
        'depth': report.depth,
        'deep_stem': report.deep_stem,
        'ssn_norm_version': __version__,
    }
    if to == 'i3d':
        if importlib.util.find_spec('ssn_norm.convert.inflate_i3d') is None:
            raise ConversionError('2-D -> 3-D inflation is not available '
                                  '(ssn_norm.convert.inflate_i3d missing)')
        from .inflate_i3d import InflationError, inflate_state_dict
        try:
            converted, inflation = inflate_state_dict(converted, backbone)
        except InflationError as error:
            raise ConversionError(str(error)) from None
        summary += f'\ninflated into {type(backbone).__name__}: ' + (
            inflation.summary())
        meta['inflated_into'] = type(backbone).__name__
    if backbone is not None:
        check_loadable(converted, backbone)
        summary += (f'\nchecked: loads strictly into {type(backbone).__name__}'
                    f' of {config}')
    save_converted(dst, converted, meta)
    return summary + f'\nwrote {dst}'
