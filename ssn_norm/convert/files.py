"""Reading source checkpoints, checking and writing converted ones."""
import copy
import hashlib
import importlib.util
import os
import os.path as osp
from collections import OrderedDict
from typing import Dict, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from ..compat import (UntrustedCheckpointError, checkpoint_format, safe_load,
                      trust_checkpoints)
from ..version import __version__
from .resnet import (RELEASED_SSN, ConversionError, check_loadable,
                     convert_resnet, extract_state_dict)

#: ``to`` values of :func:`convert_checkpoint_file`.
FILE_TARGETS = ('sn', 'ssn', 'i3d')


class Release(NamedTuple):
    """A released ImageNet checkpoint, recognised by its file's MD5.

    Attributes:
        name: what the user is told, e.g. ``'SSN ResNet-50 (8,32)'``.
        source_format: the format its keys must be detected as.
        depth: its ResNet depth.
        top1: ImageNet top-1 (%) its release reports.
    """
    name: str
    source_format: str
    depth: int
    top1: float


#: The SSN authors' ImageNet ResNet-50 checkpoints
#: (switchablenorms/Sparse_SwitchNorm model zoo), by MD5; (8,k) is 8 GPUs
#: with k images each.  Top-1 from that repository's README.
KNOWN_RELEASES: Dict[str, Release] = {
    '5c9fb111577b040e62461db51ffce69b':
    Release('SSN ResNet-50 (8,32)', RELEASED_SSN, 50, 77.2),
    'd7085632529a9b1945a28a4d3bf4cacb':
    Release('SSN ResNet-50 (8,16)', RELEASED_SSN, 50, 77.0),
    'af85a39920644421fc48e216aba6ff0e':
    Release('SSN ResNet-50 (8,8)', RELEASED_SSN, 50, 76.8),
    '949d4bd54a7c63a3371b941eb4d3ea69':
    Release('SSN ResNet-50 (8,4)', RELEASED_SSN, 50, 76.1),
    'dadb0f1a0c49c31aedd6cb83d4996a03':
    Release('SSN ResNet-50 (8,2)', RELEASED_SSN, 50, 75.9),
}


def load_source(path: str,
                trust_pickle: bool = False) -> 'OrderedDict[str, Tensor]':
    """The prefix-free state dict of the checkpoint file ``path``.

    The file is read with :func:`ssn_norm.compat.safe_load`:
    ``torch.load(weights_only=True)`` plus the numpy and mmengine types of
    training checkpoints, so nothing in it runs.  ``trust_pickle=True`` (or
    ``SSN_NORM_TRUST_CHECKPOINTS=1``) unpickles in full instead, for files
    you trust that hold other objects.  Raises :class:`ConversionError`
    naming the file and the reason; a file that is no torch checkpoint at
    all is reported as such before any advice on trusting it, and a bad
    ``SSN_NORM_TRUST_CHECKPOINTS`` value as that variable's error.
    """
    if not osp.isfile(path):
        raise ConversionError(f'{path}: no such file')
    if checkpoint_format(path) is None:
        with open(path, 'rb') as file:
            head = file.read(16)
        raise ConversionError(
            f'{path}: not a PyTorch checkpoint (neither a zip-based '
            f'torch.save file nor a legacy torch pickle; it starts with '
            f'{head!r})')
    try:
        trust = trust_pickle or trust_checkpoints()
    except ValueError as error:  # the environment's opt-in, not the file
        raise ConversionError(str(error)) from None
    try:
        checkpoint = safe_load(path, map_location='cpu', trust=trust)
    except UntrustedCheckpointError as error:
        raise ConversionError(
            f'{path}: holds pickled objects that loading without running '
            f'code refuses ({error.reason}); if you trust the file, retry '
            'with trust_pickle=True (--trust-pickle)') from error
    except Exception as error:  # reported with the path
        raise ConversionError(f'{path}: not a PyTorch checkpoint '
                              f'({type(error).__name__}: {error})') from error
    try:
        return extract_state_dict(checkpoint)
    except ConversionError as error:
        raise ConversionError(f'{path}: {error}') from None


def file_md5(path: str) -> str:
    """Hex MD5 of the file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, 'rb') as file:
        for chunk in iter(lambda: file.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def known_release(path: str) -> Tuple[str, Optional[Release]]:
    """``(md5, release)`` of the file; ``release`` is None when the hash
    matches no entry of :data:`KNOWN_RELEASES`."""
    md5 = file_md5(path)
    return md5, KNOWN_RELEASES.get(md5)


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
    from ..layers.switchable_norm import SwitchableNormBase
    kinds = set()
    for layer in module.modules():
        if isinstance(layer, SSN):
            kinds.add('ssn')
        elif isinstance(layer, SwitchableNormBase):
            kinds.add('sn')
    if len(kinds) > 1:
        raise ConversionError('the backbone mixes SN and SSN layers; '
                              'convert for one of them with --to sn|ssn')
    return kinds.pop() if kinds else None


def convert_checkpoint_file(
        src: str,
        dst: str,
        to: Optional[str] = None,
        config: Optional[str] = None,
        trust_pickle: bool = False,
        groups: Optional[int] = None,
        normalizers: Optional[Tuple[str, ...]] = None) -> str:
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
        groups: target group SN with this many channel groups (each
            layer's logits copied to every group); see
            :func:`~ssn_norm.convert.resnet.convert_resnet`.
        normalizers: target an SN of these members (GN starting from the
            source's BN logit); see
            :func:`~ssn_norm.convert.resnet.convert_resnet`.

    Returns:
        The summary to show the user.  It names the release when the MD5 of
        ``src`` is in :data:`KNOWN_RELEASES` (also written to
        ``meta['release']``), and says so in a note when it is not.

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
    md5, release = known_release(src)
    backbone = backbone_of_config(config) if config else None
    norm = to
    if to == 'i3d':
        norm = _norm_kind(backbone)
        if norm is None:
            raise ConversionError(
                f'{config}: the backbone has no SN/SSN layer; BN checkpoints '
                'inflate directly with pretrained2d=True')
    try:
        converted, report = convert_resnet(state_dict, norm, groups,
                                           normalizers)
    except ConversionError as error:
        raise ConversionError(f'{src}: {error}') from None
    if release is None:
        report.notes.append(
            f'MD5 {md5} matches no released SSN checkpoint known to this '
            'tool; converted by its keys alone')
    elif (report.source_format, report.depth) != (release.source_format,
                                                  release.depth):
        # The bytes are the release's, so the detection must agree; a
        # mismatch is a converter bug, not something to write out.
        raise ConversionError(
            f'{src}: its MD5 {md5} is that of the released {release.name} '
            f'model, but its keys read as {report.source_format} '
            f'ResNet-{report.depth}; please report this')
    summary = report.summary()
    if release is not None:
        summary = (f'recognised by MD5 {md5}: the released {release.name} '
                   f'ImageNet model (top-1 {release.top1} in its release)\n' +
                   summary)
    # Group SN: (G, K) logits.
    num_groups = next(
        (v.shape[0] if v.dim() == 2 else 1
         for k, v in converted.items() if k.endswith('.mean_weight')), 1)
    meta = {
        'converted_from': osp.basename(src),
        'source_md5': md5,
        'release': release.name if release is not None else None,
        'source_format': report.source_format,
        'source_flavour': report.source_flavour,
        'norm': report.target,
        'arch': report.arch,
        'depth': report.depth,
        'deep_stem': report.deep_stem,
        'num_groups': num_groups,
        'normalizers': list(normalizers) if normalizers else None,
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
