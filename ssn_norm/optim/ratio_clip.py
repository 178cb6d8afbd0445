"""Optimizer wrappers and constructor for switchable norms.

The SSN recipe trains the ratio logits (``mean_weight``/``var_weight``) with
lr × 0.1, no weight decay and their gradient norm clipped to 1.0.  The first
two are ``paramwise_cfg.custom_keys``; clipping one group of parameters needs
the wrapper to know them, which :class:`SwitchableOptimWrapperConstructor`
tells it (the optimizer alone has no parameter names).  The constructor
also treats SN / SSN / SyncSN / SyncSSN layers as norm layers in
``paramwise_cfg`` (mmengine recognises only torch's norm classes).
"""
from typing import Iterable, List, Optional, Union

import torch
from mmengine.optim import (AmpOptimWrapper, DefaultOptimWrapperConstructor,
                            OptimWrapper)
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS

from ..layers.switchable_norm import SwitchableNormBase
from ..utils import switchable_norms

RATIO_LOGITS = ('mean_weight', 'var_weight')


def ratio_logit_parameters(model: torch.nn.Module) -> list:
    """The trainable ratio logits of every switchable norm in ``model``."""
    return [
        getattr(layer, name) for _, layer in switchable_norms(model)
        for name in RATIO_LOGITS if getattr(layer, name).requires_grad
    ]


class _RatioClipMixin:

    def __init__(self,
                 *args,
                 ratio_clip_grad: Optional[dict] = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        ratio_clip_grad = dict(max_norm=1.0) if ratio_clip_grad is None \
            else dict(ratio_clip_grad)
        if 'max_norm' not in ratio_clip_grad:
            raise ValueError('ratio_clip_grad needs max_norm, got '
                             f'{ratio_clip_grad}')
        self.ratio_clip_grad = ratio_clip_grad
        self.ratio_params = None

    def set_ratio_params(self, params: Iterable[torch.nn.Parameter]) -> None:
        self.ratio_params = list(params)

    def clip_ratio_grads(self) -> None:
        if self.ratio_params is None:
            raise RuntimeError(
                f'{type(self).__name__} does not know the ratio logits: build '
                "it with constructor='SwitchableOptimWrapperConstructor'")
        grads = [p for p in self.ratio_params if p.grad is not None]
        if grads:
            norm = torch.nn.utils.clip_grad_norm_(grads,
                                                  **self.ratio_clip_grad)
            self.message_hub.update_scalar('train/ratio_grad_norm',
                                           float(norm))


@OPTIM_WRAPPERS.register_module()
class RatioClipOptimWrapper(_RatioClipMixin, OptimWrapper):
    """OptimWrapper that clips the ratio logits' gradient norm every step.

    Args:
        ratio_clip_grad: arguments of ``clip_grad_norm_`` for the logits
            (default ``dict(max_norm=1.0)``); other arguments as OptimWrapper.
    """

    def step(self, **kwargs) -> None:
        self.clip_ratio_grads()
        super().step(**kwargs)


@OPTIM_WRAPPERS.register_module()
class AmpRatioClipOptimWrapper(_RatioClipMixin, AmpOptimWrapper):
    """AmpOptimWrapper that clips the unscaled ratio logits' gradient norm."""

    def step(self, **kwargs) -> None:
        if not self.clip_grad_kwargs:
            # AmpOptimWrapper unscales only when it clips itself.
            self.loss_scaler.unscale_(self.optimizer)
            self.clip_ratio_grads()
        super().step(**kwargs)

    def _clip_grad(self) -> None:
        super()._clip_grad()
        self.clip_ratio_grads()


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class SwitchableOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor, with switchable norms as norm layers.

    mmengine applies ``paramwise_cfg.norm_decay_mult`` only to torch's norm
    classes (``_BatchNorm``, ``_InstanceNorm``, ``GroupNorm``,
    ``LayerNorm``), and applies ``bias_lr_mult`` to every other module's
    ``bias``; SN layers are neither.  This constructor gives the affine
    parameters (``weight`` = γ, ``bias`` = β) of every SN / SSN / SyncSN /
    SyncSSN layer exactly what mmengine gives a ``BatchNorm2d``'s: the
    weight decay ``base × norm_decay_mult`` when that is set, and no
    ``bias_lr_mult``.  A ``custom_keys`` match still overrides both, as in
    mmengine.  The ratio logits are not affine parameters: they follow
    ``custom_keys`` (the SN and SSN recipes name them) or the base decay.

    With an optimizer wrapper that clips the ratio logits
    (:class:`RatioClipOptimWrapper`), it also hands the wrapper those
    logits.
    """

    def add_params(self,
                   params: List[dict],
                   module: torch.nn.Module,
                   prefix: str = '',
                   is_dcn_module: Optional[Union[int, float]] = None) -> None:
        first = len(params)
        super().add_params(params, module, prefix, is_dcn_module)
        if not isinstance(module, SwitchableNormBase):
            return
        affine = {id(module.weight): 'weight', id(module.bias): 'bias'}
        norm_decay_mult = self.paramwise_cfg.get('norm_decay_mult')
        custom_keys = self.paramwise_cfg.get('custom_keys', {})
        for group in params[first:]:
            name = affine.get(id(group['params'][0]))
            # mmengine matches custom keys against f'{prefix}.{name}'.
            if name is None or any(key in f'{prefix}.{name}'
                                   for key in custom_keys):
                continue
            group.pop('lr', None)  # no bias_lr_mult on a norm's bias
            if self.base_wd is not None and norm_decay_mult is not None:
                group['weight_decay'] = self.base_wd * norm_decay_mult

    def __call__(self, model: torch.nn.Module) -> OptimWrapper:
        optim_wrapper = super().__call__(model)
        if isinstance(optim_wrapper, _RatioClipMixin):
            optim_wrapper.set_ratio_params(ratio_logit_parameters(model))
        return optim_wrapper
