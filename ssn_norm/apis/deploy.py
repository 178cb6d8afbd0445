"""mmengine driver of :mod:`ssn_norm.deploy`: config in, deployed file out,
and the deployed model back for the upstream inference APIs.

The transform itself (:func:`~ssn_norm.deploy.deploy_switchable_norms`) and
the file format (:func:`~ssn_norm.deploy.save_deployed`,
:func:`~ssn_norm.deploy.read_deployed`,
:func:`~ssn_norm.deploy.rebuild_deployed`) are pure PyTorch; this module
only builds a config's model and reads checkpoints, behind
``tools/deploy_ssn.py``, and hands the model to mmdet / mmseg / mmaction2
inference as their ``init_*`` functions would (``model.cfg``,
``model.dataset_meta``).
"""
import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Type

import torch
from mmengine.config import Config
from torch import nn

from ..deploy import (DeployedLayer, _default_check_forward, _tensors,
                      deploy_switchable_norms, read_deployed, rebuild_deployed,
                      save_deployed)
from .launch import load_config


def _load_and_build(config: str,
                    cfg_options: Optional[dict]) -> Tuple[Config, nn.Module]:
    from mmengine.registry import MODELS, init_default_scope

    import ssn_norm  # noqa: F401  registers SN/SSN, applies compat fixes
    cfg = load_config(config, cfg_options)
    init_default_scope(cfg.get('default_scope') or 'mmengine')
    return cfg, MODELS.build(cfg.model)


def build_model(config: str, cfg_options: Optional[dict] = None) -> nn.Module:
    """The model of ``config`` (with ``cfg_options`` merged), freshly built
    in the config's ``default_scope``; no weights are loaded."""
    return _load_and_build(config, cfg_options)[1]


def dataset_meta(cfg: Config) -> Dict[str, Any]:
    """The ``metainfo`` (classes, palette, ...) of the config's test (else
    validation) dataset, built lazily: no annotation or image is read.

    What the upstream ``init_*`` functions take from a checkpoint's
    ``meta.dataset_meta``; a deployed file keeps no such meta, and the
    config names the classes the model was trained for.  Empty when the
    config defines no test or validation dataset (e.g. a backbone alone).
    """
    from mmengine.registry import DATASETS
    loader = cfg.get('test_dataloader') or cfg.get('val_dataloader')
    if not loader or 'dataset' not in loader:
        return {}
    dataset = copy.deepcopy(loader['dataset'])
    dataset['lazy_init'] = True
    return dict(DATASETS.build(dataset).metainfo)


def load_deployed(config: str,
                  path: str,
                  cfg_options: Optional[dict] = None) -> nn.Module:
    """The deployed model of ``path`` (written by
    :func:`~ssn_norm.deploy.save_deployed`), rebuilt from ``config`` in eval
    mode, on the CPU.

    Builds ``config``'s model, redoes the replacements
    (:func:`~ssn_norm.deploy.rebuild_deployed`) and loads the state dict
    strictly.  The file is read with ``weights_only=True``; only the config
    (yours, as for any mmengine run) is code.

    Args:
        config: the config the model was deployed from.
        path: the deployed file.
        cfg_options: the ``--cfg-options`` it was deployed with; must equal
            the recorded ones.

    Raises:
        ValueError: not a deployed file, ``cfg_options`` differ from the
            recorded ones, or the plan does not fit the config's model.
    """
    data = read_deployed(path)
    meta = data['meta']
    recorded = meta.get('cfg_options') or None
    if (dict(cfg_options) if cfg_options else None) != recorded:
        raise ValueError(
            f'{path} was deployed with cfg_options={recorded!r}, got '
            f'{cfg_options!r}; pass the same options so the model matches')
    cfg, model = _load_and_build(config, cfg_options)
    rebuild_deployed(model, meta['deployed'])
    model.load_state_dict(data['state_dict'], strict=True)
    # As init_detector / init_model / init_recognizer leave a model: their
    # inference functions read the pipeline from ``cfg`` and visualisers
    # the class names from ``dataset_meta``.
    model.cfg = cfg
    model.dataset_meta = dataset_meta(cfg)
    model.eval()  # not ``return model.eval()``: mmdet's train() returns None
    return model


def deployed_inferencer(inferencer: Type,
                        config: str,
                        path: str,
                        cfg_options: Optional[dict] = None,
                        **kwargs):
    """An upstream inferencer (e.g. mmdet's ``DetInferencer``, mmseg's
    ``MMSegInferencer``, mmaction2's ``ActionRecogInferencer``) around the
    deployed model of ``path`` (:func:`load_deployed`).

    The inferencers build their model from a config and load a checkpoint
    into it, which a deployed model (its norms replaced, BN folded into
    convs) no longer fits: this subclass of ``inferencer`` takes the
    deployed model instead; pipeline and visualiser come from the config,
    the class names from :func:`dataset_meta`.

    Args:
        inferencer: the upstream inferencer class.
        config, path, cfg_options: as :func:`load_deployed`.
        kwargs: the inferencer's other arguments (``device``,
            ``palette``, ...), never ``model`` or ``weights``.
    """
    for taken in ('model', 'weights'):
        if taken in kwargs:
            raise TypeError(f'deployed_inferencer sets {taken} itself; '
                            'pass the config and the deployed file')
    model = load_deployed(config, path, cfg_options)

    class Deployed(inferencer):

        def _init_model(self, cfg, weights, device='cpu') -> nn.Module:
            return model.to(device)

    Deployed.__name__ = Deployed.__qualname__ = (
        f'Deployed{inferencer.__name__}')
    return Deployed(model=copy.deepcopy(model.cfg), weights=None, **kwargs)


def deployment_summary(deployed: List[DeployedLayer]) -> str:
    """What :func:`deploy_checkpoint` replaced, one line per kind: the
    choice and the whole replacement (``SwitchedNorm(mean=IN, var=LN)``,
    ``BatchNorm2d``; folds counted together, not per conv)."""
    kinds: Dict[Tuple[str, str], int] = {}
    for layer in deployed:
        how = ('folded into the preceding conv'
               if layer.replacement.startswith('folded into ') else
               layer.replacement)
        key = (f'{layer.mean}/{layer.var}', how)
        kinds[key] = kinds.get(key, 0) + 1
    lines = [
        f'replaced {len(deployed)} layers '
        f'({sum(d.hardened for d in deployed)} hardened):'
    ]
    lines += [
        f'  {count:4d} x mean/var {choice}: {how}'
        for (choice, how), count in sorted(kinds.items())
    ]
    return '\n'.join(lines)


@dataclass
class OutputCheck:
    """The check of :func:`deploy_checkpoint` on a random input.

    Attributes:
        shape: the input's shape.
        outputs: how many output tensors were compared.
        max_error: the largest absolute difference, deployed vs trained.
        max_value: the largest absolute trained output (errors are
            allowed ``atol + atol * max_value``).
        exact: whether the deployment should not change the outputs (no
            layer hardened); otherwise the check only reports.
    """
    shape: Tuple[int, ...]
    outputs: int
    max_error: float
    max_value: float
    exact: bool

    def describe(self) -> str:
        """One line for the tool: the result and what it means."""
        what = ('unchanged'
                if self.exact else 'changed by hardening, as expected')
        return (f'check on a random input of shape {tuple(self.shape)}: '
                f'{self.outputs} output tensors {what}, largest difference '
                f'{self.max_error:.3g} (largest output {self.max_value:.3g})')


def _check_input_rank(model: nn.Module, shape: Tuple[int, ...]) -> None:
    """Refuses a check shape of the wrong rank for mmaction2's 3-D
    recognizers, whose ``extract_feat`` takes (batch, clips, C, T, H, W):
    a 5-D clip would otherwise fail deep inside the model."""
    try:
        from mmaction.models.recognizers import Recognizer3D
    except ImportError:  # mmaction2 not installed: no such model
        return
    if isinstance(model, Recognizer3D) and len(shape) != 6:
        example = ' '.join(map(
            str,
            (1, 1, *shape[-4:]))) if len(shape) == 5 else '1 1 3 32 224 224'
        raise ValueError(
            f'--check-shape {" ".join(map(str, shape))}: a 3-D recognizer '
            'takes (batch, clips, C, T, H, W) in extract_feat; give 6 '
            f'numbers, e.g. --check-shape {example}')


def deploy_checkpoint(
    config: str,
    checkpoint: str,
    out: str,
    harden: str = 'none',
    fold: bool = True,
    spatial_dims: int = 2,
    check_shape: Optional[Tuple[int, ...]] = None,
    cfg_options: Optional[dict] = None
) -> Tuple[List[DeployedLayer], Optional[OutputCheck]]:
    """Builds ``config``'s model, loads ``checkpoint`` strictly, deploys it
    (:func:`~ssn_norm.deploy.deploy_switchable_norms`) and writes it to
    ``out`` (:func:`~ssn_norm.deploy.save_deployed`: state dict and
    replacement plan, loaded back by :func:`load_deployed`).

    ``check_shape`` runs the output check on a random input of that shape
    (it raises when an exact deployment changed the outputs) and returns
    what it measured; otherwise the check is None.
    """
    from mmengine.runner import load_checkpoint
    model = build_model(config, cfg_options)
    load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    if check_shape is not None:
        _check_input_rank(model, tuple(check_shape))
    check_input = (
        torch.randn(*check_shape) if check_shape is not None else None)
    seen: List[List[torch.Tensor]] = []  # the check's outputs, before/after

    def recorded(module: nn.Module, inputs: torch.Tensor) -> Any:
        output = _default_check_forward(module, inputs)
        seen.append(_tensors(output))
        return output

    deployed = deploy_switchable_norms(
        model,
        harden=harden,
        fold=fold,
        spatial_dims=spatial_dims,
        check_input=check_input,
        check_forward=recorded)
    check = None
    if check_input is not None:
        reference, outputs = seen
        check = OutputCheck(
            tuple(check_shape), len(outputs),
            max(((o - r).abs().max().item()
                 for o, r in zip(outputs, reference) if r.numel()),
                default=0.),
            max((r.abs().max().item() for r in reference if r.numel()),
                default=0.), not any(d.hardened for d in deployed))
    save_deployed(model, out, deployed, config, cfg_options)
    return deployed, check
