"""Switchable Normalization (SN) and Sparse Switchable Normalization (SSN).

Pure PyTorch: nothing here imports mmcv or mmengine.
"""
import math
import numbers
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.moments import (BatchMoments, MomentSpec, Sync, channel_ratios,
                           check_normalizers, member_table, names, variance)
from ..ops.ratios import softmax_ratios, sparsestmax_ratios
from ..ops.switchable_function import Plan, choose_path, switchable_norm

#: Order of the normalisers in the ratio logits (:data:`ssn_norm.ops.
#: moments.MEMBERS`).
NORMALIZERS = names()

#: ``recorder(layer, mean_bn, sqmean_bn)``, see
#: :attr:`SwitchableNormBase.moment_recorder`.
MomentRecorder = Callable[[nn.Module, Tensor, Tensor], None]

#: Starting logits of :meth:`SSN.unfreeze`.
UNFREEZE_LOGITS = ('uniform', 'soften')

# 'soften': the selected logit; SparsestMax at radius 0 then gives the
# selected normaliser 2/3 of the weight (K = 3; 3/4 for K = 2).
_SOFTENED_LOGIT = 0.5

# What works instead of TorchScript (the layers' forward holds closures and
# Python state, such as SSN's freezing and its eval-time selection).
_NO_TORCHSCRIPT = (
    'use the layer in eager mode, under torch.compile (it sees plain ops), '
    'or export it with torch.onnx.export')


def _state_key(*tensors: Tensor) -> tuple:
    """Changes whenever one of ``tensors`` is written in place or replaced.

    The version counter counts in-place writes (``fill_``, ``copy_``,
    ``load_state_dict``, optimizer steps); the data pointer changes with a
    new tensor (``.to()``, assignment).  Writes through ``.data`` bypass
    the counter.
    """
    return tuple((t.data_ptr(), t._version) for t in tensors)


def _refuse_torchscript(layer: nn.Module, how: str) -> RuntimeError:
    return RuntimeError(
        f'{type(layer).__name__} does not support {how}; {_NO_TORCHSCRIPT}')


class SwitchableNormBase(nn.Module):
    """Common machinery of SN and SSN; subclasses choose how ratios are made.

    A subclass implements :meth:`_ratios`, returning the mean and variance
    ratios stacked, ``(2, K)`` with ``K`` the number of normalizers (3: IN,
    LN, BN by default; 2: IN, LN for ``using_bn=False``), or ``(2, G, K)``
    for ``num_groups = G > 1``, and may report a one-hot selection through
    :meth:`_selected` so that eval computes only what is needed.
    The statistics themselves are :mod:`ssn_norm.ops.moments`'; the forward
    asks :func:`~ssn_norm.ops.switchable_function.choose_path` once (its
    answer: :meth:`plan`), hands its decisions down as data and updates the
    running statistics from the batch moments the ops return.

    Attributes:
        moment_recorder: None (default), or a callable
            ``recorder(layer, mean_bn, sqmean_bn)`` that receives the
            detached per-channel batch mean and second moment
            ``E[var_in + mean_in²]`` (C,) of every training forward
            *instead of* the running-statistics update (used by
            :func:`ssn_norm.batch_stats.compute_batch_stats`; set it back to
            None afterwards).
    """

    # ``build_norm_layer`` names the attribute after ``_abbr_``.  'bn' keeps
    # mmdet/mmseg ResNet keys (``layer1.0.bn1.weight``) identical to
    # torchvision/open-mmlab BN checkpoints and gives mmaction's I3D the
    # ``conv.bn`` attribute its inflation and zero-init reach for.
    _abbr_ = 'bn'

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: Optional[float] = 0.1,
                 using_bn: Optional[bool] = None,
                 using_moving_average: bool = True,
                 last_gamma: bool = False,
                 normalizers: Optional[Tuple[str, ...]] = None,
                 gn_groups: Optional[int] = None,
                 num_groups: int = 1) -> None:
        super().__init__()
        if not isinstance(num_features, int) or isinstance(
                num_features, bool) or num_features <= 0:
            raise ValueError(f'{type(self).__name__}: num_features must be a '
                             f'positive int, got {num_features!r}')
        if not eps > 0:
            raise ValueError(
                f'{type(self).__name__}: eps must be > 0, got {eps!r}')
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(
                f'{type(self).__name__}: momentum must be in [0, 1] (torch '
                'convention: the weight of the new batch; the released SN '
                f'code\'s 0.9 is 0.1 here), got {momentum!r}')
        self.normalizers = _normalizers(
            type(self).__name__, num_features, using_bn, normalizers,
            gn_groups)
        if (isinstance(num_groups, bool) or not isinstance(num_groups, int)
                or num_groups <= 0 or num_features % num_groups):
            raise ValueError(
                f'{type(self).__name__}: num_groups must be a positive int '
                f'dividing the {num_features} channels (each group of '
                f'C / num_groups channels has its own ratios), got '
                f'num_groups={num_groups!r}')
        self.num_features = num_features
        self.eps = float(eps)
        self.momentum = momentum
        self.gn_groups = gn_groups
        self.num_groups = num_groups
        # Looked up once: an outer torch.compile traces the forward, and
        # would trace (and warn about) the cached table lookup every time.
        self._members = member_table(self.normalizers, gn_groups)
        # Running statistics exactly when a member averages over the batch.
        self.using_bn = any(m.batch for m in self._members)
        self.using_moving_average = bool(using_moving_average)
        self.last_gamma = bool(last_gamma)
        # One logit per member of the mix (ssn_norm.ops.moments), per
        # channel group; one group keeps the released (K,) shape.
        shape = (len(self.normalizers), )
        if num_groups > 1:
            shape = (num_groups, ) + shape
        self.weight = nn.Parameter(torch.empty(num_features))
        self.bias = nn.Parameter(torch.empty(num_features))
        self.mean_weight = nn.Parameter(torch.ones(shape))
        self.var_weight = nn.Parameter(torch.ones(shape))
        if self.using_bn:
            self.register_buffer('running_mean', torch.zeros(num_features))
            self.register_buffer('running_var', torch.ones(num_features))
            if not self.using_moving_average or momentum is None:
                self.register_buffer('num_batches_tracked',
                                     torch.tensor(0, dtype=torch.long))
        self.moment_recorder: Optional[MomentRecorder] = None
        self.reset_parameters()

    # ------------------------------------------------------------------ setup
    def reset_running_stats(self) -> None:
        if self.using_bn:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            if hasattr(self, 'num_batches_tracked'):
                self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """γ = 1 (0 with ``last_gamma``), β = 0, ratio logits = 1."""
        with torch.no_grad():
            self.weight.fill_(0 if self.last_gamma else 1)
            self.bias.zero_()
            self.mean_weight.fill_(1)
            self.var_weight.fill_(1)
        self.reset_running_stats()

    @property
    def local_running_stats(self) -> bool:
        """Whether the running statistics are this process's own (a batch
        member, not synchronised): what
        :func:`ssn_norm.distributed.sync_running_stats` averages."""
        return self.using_bn

    @property
    def members(self) -> tuple:
        """The mixed members (:func:`~ssn_norm.ops.moments.member_table`),
        in logit order."""
        return self._members

    def extra_repr(self) -> str:
        text = (f'{self.num_features}, eps={self.eps}, '
                f'momentum={self.momentum}, using_bn={self.using_bn}, '
                f'using_moving_average={self.using_moving_average}, '
                f'last_gamma={self.last_gamma}')
        if self.normalizers not in (NORMALIZERS, names(False)):
            text += f', normalizers={self.normalizers}'
        if self.gn_groups is not None:
            text += f', gn_groups={self.gn_groups}'
        if self.num_groups > 1:
            text += f', num_groups={self.num_groups}'
        return text

    # ---------------------------------------------------------------- ratios
    def _logits(self) -> Tensor:
        """The mean and variance logits stacked: (2, K) or (2, G, K)."""
        return torch.stack([self.mean_weight, self.var_weight])

    def _ratios(self, host: bool = False) -> Tensor:
        """Mean and variance ratios stacked as :meth:`_logits`, in fp32
        (fp64 for an fp64 module); ``host``: the plan allows SparsestMax's
        host form."""
        raise NotImplementedError

    def _selected(self) -> Optional[Tuple[int, int]]:
        """``(mean_idx, var_idx)`` if ratios are known one-hot, else None."""
        return None

    @torch.no_grad()
    def ratios(self) -> Tuple[Tensor, Tensor]:
        """The current (mean, variance) ratios over :attr:`normalizers`,
        detached: ``(K,)`` each, or ``(G, K)`` with ``num_groups = G > 1``
        (row g: channels ``[g·C/G, (g+1)·C/G)``)."""
        mean_ratio, var_ratio = self._ratios().detach().clone().unbind()
        return mean_ratio, var_ratio

    # ------------------------------------------------------------ statistics
    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 3:
            raise ValueError(
                f'{type(self).__name__} expects input of shape (N, C, *) with '
                f'at least one spatial/temporal dimension, got shape '
                f'{tuple(x.shape)}; for (N, C) features use nn.BatchNorm1d '
                'or nn.LayerNorm')
        if x.shape[1] != self.num_features:
            raise ValueError(
                f'{type(self).__name__} was built for {self.num_features} '
                f'channels but got input with {x.shape[1]} channels (shape '
                f'{tuple(x.shape)})')

    def _record(self, batch: BatchMoments, x: Tensor) -> None:
        """A training forward's batch moments (detached: no graph is
        recorded) to :attr:`moment_recorder` if set, else into the running
        statistics."""
        if x.numel() == 0 and not float(batch.count) > 0:
            return  # no sample here, nor (SyncSN) on any other process
        if self.moment_recorder is not None:
            self.moment_recorder(self, batch.mean, batch.sqmean)
            return
        if self.using_moving_average and self.momentum is not None:
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(batch.mean, alpha=m)
            self.running_var.mul_(1 - m).add_(batch.var, alpha=m)
            return
        # Cumulative (equal-weight) average of the batch means and second
        # moments seen since the last reset_running_stats().
        self.num_batches_tracked.add_(1)
        step = 1.0 / self.num_batches_tracked.to(batch.mean.dtype)
        sqmean_run = self.running_var + self.running_mean.square()
        sqmean_run.add_((batch.sqmean - sqmean_run) * step)
        self.running_mean.add_((batch.mean - self.running_mean) * step)
        self.running_var.copy_(variance(self.running_mean, sqmean_run))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        logits = state_dict.get(prefix + 'mean_weight')
        if (isinstance(logits, Tensor)
                and logits.shape != self.mean_weight.shape):
            # torch's own message names the shapes only; say the fix.
            fix = ('convert an ungrouped SN/SSN checkpoint with '
                   'tools/convert_checkpoint.py --groups '
                   f'{self.num_groups}'
                   if logits.dim() == 1 and self.num_groups > 1 else
                   'build the layer with the checkpoint\'s num_groups and '
                   'normalizers')
            error_msgs.append(
                f'{prefix}mean_weight: the checkpoint holds ratio logits of '
                f'shape {tuple(logits.shape)}, this {type(self).__name__} '
                f'{tuple(self.mean_weight.shape)} (num_groups='
                f'{self.num_groups}, normalizers={self.normalizers}); {fix}')
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling.
        raise _refuse_torchscript(self, 'torch.jit.script')

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            # A trace records one path of Python control flow (SSN's
            # freezing, the eval-time selection) and fails its own check.
            raise _refuse_torchscript(self, 'torch.jit.trace')
        self._check_input(x)
        selected = None if self.training else self._selected()
        plan = self._plan(x, selected)
        ratios = None
        if selected is None:
            # Group SN: each channel takes its group's ratios.
            ratios = channel_ratios(
                self._ratios(plan.host_ratios), self.num_features)
        out, batch = switchable_norm(x, self.weight, self.bias, ratios,
                                     self._moment_spec(selected), plan)
        if batch is not None:
            self._record(batch, x)
        return out

    def plan(self, x: Tensor) -> Plan:
        """The path and kernel provider a forward on ``x`` takes now (in
        this mode, grad mode and backend); ``print`` it to see why."""
        return self._plan(x, None if self.training else self._selected())

    def _plan(self, x: Tensor, selected) -> Plan:
        return choose_path(
            x, (self.weight, self.bias, self.mean_weight, self.var_weight),
            self.training, selected)

    def _moment_spec(self, selected: Optional[Tuple[int, int]]) -> MomentSpec:
        """This forward's decisions, as data for the ops."""
        return MomentSpec(
            members=self.members,
            training=self.training,
            eps=self.eps,
            running=((self.running_mean,
                      self.running_var) if self.using_bn else None),
            selected=selected,
            sync=self._sync())

    def _sync(self) -> Optional[Sync]:
        """Where the batch members average (SyncSN): None, this process's
        batch."""
        return None


def _normalizers(owner: str, num_features: int, using_bn: Optional[bool],
                 normalizers, gn_groups) -> Tuple[str, ...]:
    """The layer's member names from ``using_bn`` (the alias) and/or
    ``normalizers``; a ``ValueError`` naming the fix where they conflict or
    the set is invalid."""
    if normalizers is None:
        if gn_groups is not None:
            raise ValueError(
                f'{owner}: gn_groups={gn_groups!r} is given but \'GN\' is '
                'not among the normalizers; pass normalizers=(..., \'GN\')')
        return names(True if using_bn is None else bool(using_bn))
    try:
        normalizers = check_normalizers(normalizers, gn_groups, num_features)
    except ValueError as err:
        raise ValueError(f'{owner}: {err}') from None
    if using_bn is not None and bool(using_bn) != ('BN' in normalizers):
        raise ValueError(
            f'{owner}: using_bn={using_bn!r} contradicts normalizers='
            f'{normalizers}; give only normalizers (using_bn=False is the '
            'alias of normalizers=(\'IN\', \'LN\'))')
    return normalizers


class SN(SwitchableNormBase):
    """Switchable Normalization (Luo et al., ICLR 2019) for (N, C, *) input.

    Normalises with a learned mix of instance (IN, per sample and channel),
    layer (LN, per sample) and batch (BN, per channel) statistics; means and
    variances are mixed by two softmaxes over the logits ``mean_weight`` and
    ``var_weight`` (order IN, LN, BN), shared by all channels.  Statistics are
    taken over every dimension after C, so 5-D video input is normalised over
    T×H×W.

    Args:
        num_features: channels C.
        eps: added to the mixed variance.
        momentum: running-statistics update in the torch convention (weight of
            the new batch; the released code's 0.9 equals 0.1 here).  None
            gives a cumulative average, like ``nn.BatchNorm2d``.
        using_bn: mix in BN statistics; False leaves IN + LN (2 logits), for
            one sample per device: the alias of ``normalizers=('IN', 'LN')``
            (None: as ``normalizers`` says, default True).
        using_moving_average: False makes the running statistics an exact
            average of the batch means and second moments seen since
            :meth:`reset_running_stats` (the paper's batch-average inference
            statistics) instead of a moving average.
        last_gamma: initialise γ to 0 (for the last norm of a residual block).
        normalizers: the ordered members of the mix, any non-empty subset
            of ``('IN', 'LN', 'BN', 'GN')``; the logits follow this order.
            Default ``('IN', 'LN', 'BN')``.
        gn_groups: GN's group count, required exactly when ``'GN'`` is a
            member; GN moments are per sample over each group of
            ``C / gn_groups`` channels, derived from the IN moments as LN's.
        num_groups: G, channel groups with their own ratios (group SN):
            group g (channels ``[g·C/G, (g+1)·C/G)``) mixes the usual
            statistics with its own ratios; the logits are then (G, K).
            1 (default): one (K,) ratio vector, the released layout.

    Note:
        Numerics (written once, in :mod:`ssn_norm.ops.moments`) follow the
        released implementation so its checkpoints evaluate identically:
        IN variance is unbiased; LN and BN moments are
        derived from the IN moments as ``mean(var_in + mean_in²) - mean²``; in
        eval BN uses the running statistics and IN/LN come from the input.
        Where those formulas break we define:

        * a single spatial element (a 1×1 map, e.g. mmseg's ASPP image pool or
          PSP pool scale 1): the IN variance is 0 instead of NaN, so IN maps
          the input to β and LN/BN still normalise across channels/batch;
        * a batch of one: BN statistics equal IN statistics (finite; unlike
          ``nn.BatchNorm2d`` no error is raised);
        * derived variances are clamped at 0 against rounding;
        * fp16/bf16 input: statistics and the fused scale/shift are computed
          in fp32, the output has the input's dtype.

        Running statistics start at mean 0 / variance 1 (torch's BN
        convention; the released code started the variance at 0).
        The class deliberately does not subclass ``_BatchNorm``: mmengine
        would convert it to SyncBatchNorm or fold it into convs as BN.
        Double backward (``create_graph=True``) is exact on every backend.
        TorchScript is refused (``torch.jit.script`` and ``torch.jit.trace``
        raise a ``RuntimeError`` naming what works: eager,
        ``torch.compile``, ``torch.onnx.export``).
    """

    def _ratios(self, host: bool = False) -> Tensor:
        return softmax_ratios(self._logits())


class SSN(SwitchableNormBase):
    """Sparse Switchable Normalization (Shao et al., CVPR 2019).

    SN statistics whose ratios come from :func:`~ssn_norm.ops.sparsestmax` at
    the radius held in the buffer ``radius`` (set during training by
    :class:`~ssn_norm.hooks.SparsestMaxRadiusHook`, linear 0 → 1 by default).
    Once the mean (or variance) ratios become one-hot (within
    :data:`~ssn_norm.ops.ONE_HOT_TOL`) during training, the buffer
    ``mean_fixed`` (``var_fixed``) is set and the logits are overwritten with
    that one-hot vector; from then on the ratios stay exactly one-hot, also
    across save/resume.  All of this happens on the device, with no host
    synchronisation.  In eval, a layer whose ratios are both frozen computes
    only the statistics it selected (BN: a single affine pass).

    Arguments as :class:`SN`.

    The radius must be finite and ≥ 0: :meth:`set_radius` checks it where
    it is written, and a value written to the buffer some other way (or
    loaded from a checkpoint) is checked before its first use.  A frozen
    layer (e.g. the released ImageNet weights, every layer frozen) learns
    its ratios again after :meth:`unfreeze`.

    Note:
        The logits take part in every training forward even once frozen (with
        zero gradient), so DDP never sees an unused parameter.  The eval-time
        selection is cached per layer and follows in-place writes to the
        flags and logits (``fill_``, ``copy_``, ``load_state_dict``), but
        not writes through ``.data``.
    """

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        # One flag per ratio row: (1,) as in the released checkpoints, (G,)
        # for group SSN.
        self.register_buffer('mean_fixed',
                             torch.zeros(self.num_groups, dtype=torch.long))
        self.register_buffer('var_fixed',
                             torch.zeros(self.num_groups, dtype=torch.long))
        self.register_buffer('radius', torch.zeros(1))
        self._selection_cache = None
        self._radius_key = None

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, 'mean_fixed'):
            self.mean_fixed.zero_()
            self.var_fixed.zero_()
        self._selection_cache = None

    # ----------------------------------------------------------- radius
    def _check_radius(self, value, where: str) -> float:
        """``value`` as a float if it is a finite number ≥ 0, else raise."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f'{type(self).__name__}: {where} must be a real '
                            f'number, got {value!r}')
        value = float(value)
        if not (math.isfinite(value) and value >= 0):
            one_hot = max_radius(self.mean_weight.shape[-1])
            raise ValueError(
                f'{type(self).__name__}: {where} must be a finite number '
                f'>= 0 (0: sparsemax; >= {one_hot:.4f}: one-hot for every '
                f'input), got {value!r}')
        return value

    def set_radius(self, radius: float) -> None:
        """Set the SparsestMax radius; raise unless finite and ≥ 0.

        No host synchronisation: the value is checked on the host before
        it is written.
        """
        value = self._check_radius(radius, 'radius')
        self.radius.fill_(value)
        self._radius_key = _state_key(self.radius)

    def _checked_radius(self) -> Tensor:
        # A radius written around set_radius (fill_, .to(), DDP's buffer
        # broadcast) is checked once before use: a negative one would act
        # as its absolute value (sparsestmax squares it), NaN fails deep
        # in sparsemax.
        if (not torch.compiler.is_compiling()
                and _state_key(self.radius) != self._radius_key):
            if self.radius.device.type == 'cpu':
                self._check_radius(
                    float(self.radius.reshape(-1)[0]), 'the radius buffer')
            else:
                self._assert_radius_async(self.radius)
            self._radius_key = _state_key(self.radius)
        return self.radius

    def _assert_radius_async(self, radius: Tensor) -> None:
        """The radius check without a host read, for accelerators (where
        a buffer broadcast every step would otherwise cost a host
        synchronisation per layer); a failure is a device-side assert."""
        valid = (torch.isfinite(radius) & (radius >= 0)).all()
        torch._assert_async(
            valid, f'{type(self).__name__}: the radius buffer must be a '
            'finite number >= 0')

    # --------------------------------------------------------- unfreezing
    @torch.no_grad()
    def unfreeze(self, logits: str = 'uniform', radius: float = 0.0) -> None:
        """Let frozen ratios learn again, e.g. to fine-tune frozen weights.

        Clearing the flags alone is not enough: a frozen row's logits are
        one-hot, their SparsestMax is one-hot at any radius, so the row
        freezes again on the next training step.  Each frozen row (mean
        and/or variance) therefore gets new logits; rows not frozen are
        still learning and keep theirs.

        Args:
            logits: starting logits of the frozen rows.  ``'uniform'``
                (default): zeros, equal ratios, SSN's own starting point
                (equal logits), so the ratios are learned anew for the new
                task under a growing radius, as in the paper's training;
                the pretrained choice was made for ImageNet's batch
                statistics, which detection batch sizes do not have.
                ``'soften'``: keep the pretrained choice as the start,
                softened to 0.5 on the selected normaliser and 0 elsewhere,
                so at radius 0 it keeps 2/3 of the weight (3/4 for
                ``using_bn=False``) and every logit gets a gradient.
            radius: the new radius, normally the start of the schedule (0:
                plain sparsemax, where only one-hot logits freeze).
                :class:`~ssn_norm.hooks.SparsestMaxRadiusHook` sets it from
                its schedule again at every step.

        Guarantees: afterwards no row is frozen, no reset row's ratios are
        one-hot at radius 0 (so none re-freezes there), and the eval-time
        selection follows.
        """
        if logits not in UNFREEZE_LOGITS:
            raise ValueError(f'{type(self).__name__}.unfreeze: logits must '
                             f'be one of {UNFREEZE_LOGITS}, got {logits!r}')
        self.set_radius(radius)
        for param, fixed in ((self.mean_weight, self.mean_fixed),
                             (self.var_weight, self.var_fixed)):
            if logits == 'uniform':
                start = torch.zeros_like(param)
            else:
                start = F.one_hot(param.argmax(-1), param.shape[-1]).to(
                    param.dtype) * _SOFTENED_LOGIT
            # On the device: no host read of the flags (one per row).
            frozen = fixed.bool().view(param.shape[:-1] + (1, ))
            param.copy_(torch.where(frozen, start, param))
            fixed.zero_()

    @property
    def frozen(self) -> Tensor:
        """Bool tensor (2,): whether the mean / variance ratios are frozen;
        (2G,) for group SSN (the G mean rows, then the G variance rows)."""
        return torch.cat([self.mean_fixed, self.var_fixed]).bool()

    def _ratios(self, host: bool = False) -> Tensor:
        # Rows: the G mean logits, then the G variance logits (G = 1: the
        # released (2, K)); SparsestMax and freezing work per row.
        logits = self._logits()
        shape = logits.shape
        freeze = self.training and torch.is_grad_enabled()
        found = sparsestmax_ratios(
            logits.view(-1, shape[-1]), self._checked_radius(),
            torch.cat([self.mean_fixed, self.var_fixed]), freeze, host)
        if found.hot is not None:
            self._store_frozen(found.newly, found.hot)
        return found.ratios.view(shape)

    @torch.no_grad()
    def _store_frozen(self, newly: Tensor, hot: Tensor) -> None:
        """Sets the flags of the rows frozen now and, where the logits are
        this module's own parameters, stores their one-hot vectors as the
        logits.  On the CPU nothing is written in a step where no row froze
        (a free host read); on an accelerator the writes are unconditional
        (no host synchronisation)."""
        if newly.device.type == 'cpu' and not bool(newly.any()):
            return
        groups = self.num_groups
        for fixed, part in ((self.mean_fixed, newly[:groups]),
                            (self.var_fixed, newly[groups:])):
            fixed.copy_(fixed.bool() | part)
        rows = newly.unsqueeze(-1)
        for index, param in enumerate((self.mean_weight, self.var_weight)):
            # Logits passed in through torch.func.functional_call (or
            # torch.func transforms) are the caller's tensors, possibly
            # saved for its backward: left as they are.  A frozen row's
            # ratios are the one-hot vector of its logits' argmax, the
            # vertex it froze on, either way.
            if not (isinstance(param, nn.Parameter) and param.is_leaf):
                continue
            part = slice(index * groups, (index + 1) * groups)
            param.copy_(
                torch.where(rows[part], hot[part].to(param.dtype),
                            param.view(groups, -1)).view_as(param))
        self._selection_cache = None

    def _selected(self) -> Optional[Tuple[int, int]]:
        # One host read per layer, then cached until the flags or logits
        # change (an edit, load_state_dict, unfreeze, a training step).
        if torch.compiler.is_compiling():
            key = None if self._selection_cache is None else (
                self._selection_cache[0])
        else:
            key = _state_key(self.mean_fixed, self.var_fixed, self.mean_weight,
                             self.var_weight)
        if self._selection_cache is None or self._selection_cache[0] != key:
            selection = None
            if all(self.frozen.tolist()):
                # Every group frozen on the same members: one selection.
                # Groups that differ mix with their one-hot ratios: they
                # need the per-row moments anyway (unless all chose BN,
                # which is the single selection), and the other members'
                # statistics cost O(N·C) on top.
                rows = [
                    w.view(-1, w.shape[-1]).argmax(-1).tolist()
                    for w in (self.mean_weight, self.var_weight)
                ]
                if all(len(set(row)) == 1 for row in rows):
                    selection = (rows[0][0], rows[1][0])
            self._selection_cache = (key, selection)
        return self._selection_cache[1]

    def train(self, mode: bool = True):
        self._selection_cache = None
        return super().train(mode)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._selection_cache = None
        radius = state_dict.get(prefix + 'radius')
        if isinstance(radius, Tensor) and radius.numel() == 1:
            # Fail at the load, naming the key, not at the first forward.
            self._check_radius(
                float(radius.reshape(-1)[0]),
                f'checkpoint entry {prefix}radius')
        return super()._load_from_state_dict(state_dict, prefix, *args,
                                             **kwargs)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', radius={float(self.radius):.4g}'


def max_radius(num_normalizers: int = 3) -> float:
    """Radius from which SparsestMax is one-hot for every input: √((K-1)/K)."""
    return math.sqrt((num_normalizers - 1) / num_normalizers)
