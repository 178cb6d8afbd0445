"""The layer catalogue: every normaliser compared, and the input shapes."""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..layers import SN, SSN
from ..ops.providers import PROVIDERS
from .timing import Timing, peak_memory_bytes, resolve_device, time_interleaved

__all__ = [
    'LAYER_NORMS', 'LAYER_SHAPES', 'LayerCase', 'LayerResult',
    'benchmark_layers', 'build_norm', 'frozen_ssn'
]

#: Normalisers compared, in table order.  LN is ``GroupNorm(1, C)`` (per
#: sample over C and space, per-channel affine: the LN inside SN); IN has an
#: affine transform; GN uses 32 groups.
LAYER_NORMS = ('BN', 'GN', 'IN', 'LN', 'SN', 'SSN')


def build_norm(name: str, channels: int) -> nn.Module:
    """A normaliser of :data:`LAYER_NORMS` for (N, ``channels``, *) input."""
    if name == 'BN':
        return _AnyRankBatchNorm(channels)
    if name == 'GN':
        return nn.GroupNorm(min(32, channels), channels)
    if name == 'IN':
        return _AnyRankInstanceNorm(channels)
    if name == 'LN':
        return nn.GroupNorm(1, channels)
    if name == 'SN':
        return SN(channels)
    if name == 'SSN':
        return SSN(channels)
    raise ValueError(f'unknown norm {name!r}; choose from {LAYER_NORMS}')


class _AnyRankBatchNorm(nn.BatchNorm2d):
    """torch's BatchNorm for (N, C, *) input of any rank (same kernels)."""

    def _check_input_dim(self, input: Tensor) -> None:
        pass


class _AnyRankInstanceNorm(nn.Module):
    """torch's affine InstanceNorm for (N, C, *) input of any rank."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.instance_norm(
            x, weight=self.weight, bias=self.bias, eps=self.eps)


def frozen_ssn(channels: int, choice: str) -> SSN:
    """An SSN layer in eval whose ratios are frozen one-hot on ``choice``.

    ``choice`` is 'IN', 'LN' or 'BN' for both mean and variance; running
    statistics are randomised so that BN is not an identity.
    """
    index = ('IN', 'LN', 'BN').index(choice)
    layer = SSN(channels)
    with torch.no_grad():
        hot = nn.functional.one_hot(torch.tensor(index), 3).float()
        layer.mean_weight.copy_(hot)
        layer.var_weight.copy_(hot)
        layer.mean_fixed.fill_(1)
        layer.var_fixed.fill_(1)
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2.0)
    return layer.eval()


@dataclass(frozen=True)
class LayerCase:
    """One input shape of a benchmark family."""

    family: str  # 'ResNet-50', 'FPN', 'I3D'
    name: str  # e.g. 'res2 (stage 1)'
    shape: Tuple[int, ...]


#: Default shapes.  ResNet-50 stages at batch 8, 224² (res2 also with the
#: 64 channels of its 1×1-reduced convs); FPN levels at batch 2, 800×1344
#: (the detection training size); I3D R50 stages at batch 2 for a 32×224²
#: clip (T = 8 after the temporal stride of the stem), plus the 64-channel
#: 4×64×8×28×28 map.  The ``*`` rows are the sizes quoted in issue 8.
LAYER_SHAPES = (
    LayerCase('ResNet-50', 'res2 64-ch*', (8, 64, 56, 56)),
    LayerCase('ResNet-50', 'res2', (8, 256, 56, 56)),
    LayerCase('ResNet-50', 'res3', (8, 512, 28, 28)),
    LayerCase('ResNet-50', 'res4', (8, 1024, 14, 14)),
    LayerCase('ResNet-50', 'res5', (8, 2048, 7, 7)),
    LayerCase('FPN', 'P2*', (2, 256, 200, 336)),
    LayerCase('FPN', 'P3', (2, 256, 100, 168)),
    LayerCase('FPN', 'P5', (2, 256, 25, 42)),
    LayerCase('I3D', 'res2 64-ch*', (4, 64, 8, 28, 28)),
    LayerCase('I3D', 'res2', (2, 256, 8, 56, 56)),
    LayerCase('I3D', 'res4', (2, 1024, 8, 14, 14)),
    LayerCase('I3D', 'res5', (2, 2048, 8, 7, 7)),
)


@dataclass
class LayerResult:
    """Timings (s per call) and peak memory (bytes) of one shape."""

    case: LayerCase
    train: Dict[str, Timing] = field(default_factory=dict)
    eval: Dict[str, Timing] = field(default_factory=dict)
    frozen: Dict[str, Timing] = field(default_factory=dict)
    peak: Dict[str, Optional[int]] = field(default_factory=dict)


def _train_step(layer: nn.Module, x: Tensor,
                grad: Tensor) -> Callable[[], object]:
    inputs = [x] + [p for p in layer.parameters() if p.requires_grad]

    def step():
        # autograd.grad: no .grad accumulation pass to skew the timing.
        return torch.autograd.grad(layer(x), inputs, grad)

    return step


def _eval_step(layer: nn.Module, x: Tensor) -> Callable[[], object]:

    def step():
        with torch.no_grad():
            return layer(x)

    return step


def benchmark_layers(cases: Sequence[LayerCase] = LAYER_SHAPES,
                     norms: Sequence[str] = LAYER_NORMS,
                     repeats: int = 7,
                     memory: bool = True,
                     frozen: bool = True,
                     clock: str = 'wall',
                     log: Optional[Callable[[str], None]] = None,
                     device: str = 'cpu') -> List[LayerResult]:
    """Training fwd+bwd, eval, frozen-SSN eval and peak memory per shape.

    Frozen rows compare an SSN frozen one-hot on IN/LN/BN (``SSN[IN]``…)
    with the plain normaliser it selected, in eval.  Inputs and layers
    live on ``device``.  The ``compiled`` kernel provider is timed after
    its warm-up (:meth:`~ssn_norm.ops.providers.CompiledProvider.
    end_warm_up`): the steady state of a long run.
    """
    PROVIDERS['compiled'].end_warm_up()
    where = resolve_device(device)
    timed = dict(repeats=repeats, clock=clock, device=device)
    results = []
    for case in cases:
        if log:
            log(f'{case.family} {case.name} {case.shape}')
        channels = case.shape[1]
        x = torch.randn(case.shape, device=where).requires_grad_()
        grad = torch.randn(case.shape, device=where)
        layers = {name: build_norm(name, channels).to(where) for name in norms}
        result = LayerResult(case)
        result.train = time_interleaved(
            {
                name: _train_step(layer.train(), x, grad)
                for name, layer in layers.items()
            }, **timed)
        if memory:
            for name, layer in layers.items():
                result.peak[name] = peak_memory_bytes(
                    _train_step(layer.train(), x, grad), device)
        result.eval = time_interleaved(
            {
                name: _eval_step(layer.eval(), x)
                for name, layer in layers.items()
            }, **timed)
        if frozen:
            cases_ = {}
            for choice in ('IN', 'LN', 'BN'):
                plain = layers.get(choice) or build_norm(choice, channels)
                cases_[choice] = _eval_step(plain.to(where).eval(), x)
                cases_[f'SSN[{choice}]'] = _eval_step(
                    frozen_ssn(channels, choice).to(where), x)
            result.frozen = time_interleaved(cases_, **timed)
        results.append(result)
    return results
