"""mmengine driver of :mod:`ssn_norm.deploy`: config in, deployed file out.

The transform itself (:func:`~ssn_norm.deploy.deploy_switchable_norms`) and
the file format (:func:`~ssn_norm.deploy.save_deployed`,
:func:`~ssn_norm.deploy.read_deployed`,
:func:`~ssn_norm.deploy.rebuild_deployed`) are pure PyTorch; this module
only builds a config's model and reads checkpoints, behind
``tools/deploy_ssn.py``.
"""
from typing import List, Optional, Tuple

import torch
from torch import nn

from ..deploy import (DeployedLayer, deploy_switchable_norms, read_deployed,
                      rebuild_deployed, save_deployed)
from .launch import load_config


def build_model(config: str, cfg_options: Optional[dict] = None) -> nn.Module:
    """The model of ``config`` (with ``cfg_options`` merged), freshly built
    in the config's ``default_scope``; no weights are loaded."""
    from mmengine.registry import MODELS, init_default_scope

    import ssn_norm  # noqa: F401  registers SN/SSN, applies compat fixes
    cfg = load_config(config, cfg_options)
    init_default_scope(cfg.get('default_scope') or 'mmengine')
    return MODELS.build(cfg.model)


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
    model = build_model(config, cfg_options)
    rebuild_deployed(model, meta['deployed'])
    model.load_state_dict(data['state_dict'], strict=True)
    model.eval()  # not ``return model.eval()``: mmdet's train() returns None
    return model


def deploy_checkpoint(
        config: str,
        checkpoint: str,
        out: str,
        harden: str = 'none',
        fold: bool = True,
        spatial_dims: int = 2,
        check_shape: Optional[Tuple[int, ...]] = None,
        cfg_options: Optional[dict] = None) -> List[DeployedLayer]:
    """Builds ``config``'s model, loads ``checkpoint`` strictly, deploys it
    (:func:`~ssn_norm.deploy.deploy_switchable_norms`) and writes it to
    ``out`` (:func:`~ssn_norm.deploy.save_deployed`: state dict and
    replacement plan, loaded back by :func:`load_deployed`).
    ``check_shape`` runs the output check on a random input of that
    shape."""
    from mmengine.runner import load_checkpoint
    model = build_model(config, cfg_options)
    load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    check_input = (
        torch.randn(*check_shape) if check_shape is not None else None)
    deployed = deploy_switchable_norms(
        model,
        harden=harden,
        fold=fold,
        spatial_dims=spatial_dims,
        check_input=check_input)
    save_deployed(model, out, deployed, config, cfg_options)
    return deployed
