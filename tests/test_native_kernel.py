"""The C++ kernels (``ssn_norm._ext``): built, and the frozen-LN inference
of SN/SSN (the 'cpp' provider's ``layer_norm``; its row passes are
tests/test_providers.py's).

``tools/install.sh`` builds them; these tests fail (rather than skip) when
they are missing, since README's install is meant to provide them.
"""
import pytest
import torch

from ssn_norm import SSN
from ssn_norm.ops import providers
from ssn_norm.ops.switchable_function import use_backend

native = providers.PROVIDERS['cpp']


def released_ln(x, weight, bias, eps):
    """The released code's LN term, in float64, straight from its formula:
    LN moments derived from the unbiased IN moments."""
    xd = x.double().reshape(x.shape[0], x.shape[1], -1)
    length = xd.shape[-1]
    var_in, mean_in = torch.var_mean(xd, -1, correction=int(length > 1))
    mean_ln = mean_in.mean(1, keepdim=True)
    var_ln = ((var_in + mean_in.square()).mean(1, keepdim=True) -
              mean_ln.square()).clamp(min=0)
    out = (
        (xd - mean_ln.unsqueeze(-1)) / torch.sqrt(var_ln.unsqueeze(-1) + eps) *
        weight.double().view(1, -1, 1) + bias.double().view(1, -1, 1))
    return out.view(x.shape)


def random_case(shape, dtype, offset=0.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    view = (1, c) + (1, ) * (len(shape) - 2)
    # Per-channel means and scales, so the channel-mean spread matters.
    x = (
        torch.randn(shape, generator=gen, dtype=torch.float64) *
        torch.linspace(0.5, 2, c, dtype=torch.float64).view(view) +
        torch.linspace(-1, 1, c, dtype=torch.float64).view(view) + offset)
    weight = torch.randn(c, generator=gen) * 0.3 + 1
    bias = torch.randn(c, generator=gen) * 0.3
    return x.to(dtype), weight, bias


SHAPES = {
    '4d': (2, 3, 4, 5),
    '5d': (2, 3, 2, 3, 4),
    '2d': (4, 6),  # one element per channel: IN variance 0
    '1x1': (3, 4, 1, 1),
    'n1': (1, 5, 7, 7),
    'c1': (2, 1, 6, 6),
    'short rows': (2, 40, 3),  # many rows per flush of the lane sums
    'long rows': (2, 3, 9000),  # rows longer than a lane-sum block
    'res5-like': (2, 64, 7, 7),
    # Short float rows go 16 at a time on AVX-512: tails, no tail, rows left
    # over after the groups of 16, threads' ranges that split a sample, the
    # longest short row and one more.
    'rows of 49, odd C': (3, 37, 7, 7),
    'rows of 49, split samples': (3, 700, 7, 7),
    'rows of 16': (2, 35, 4, 4),
    'rows of 17': (2, 19, 17),
    'rows of 256': (2, 20, 16, 16),
    'rows of 257': (2, 17, 257),
}


def test_kernel_is_built():
    assert native.ext is not None, providers.UNAVAILABLE_REASON


@pytest.mark.parametrize('name', sorted(SHAPES))
def test_matches_released_formula_fp64(name):
    x, weight, bias = random_case(SHAPES[name], torch.float64)
    out = native.ext.layer_norm_released(x, weight, bias, 1e-5)
    assert out.dtype == torch.float64 and out.shape == x.shape
    torch.testing.assert_close(
        out, released_ln(x, weight, bias, 1e-5), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize('name', sorted(SHAPES))
@pytest.mark.parametrize('offset', [0.0, 1000.0])
@pytest.mark.parametrize('short_row_simd', [True, False])
def test_matches_released_formula_fp32(name, offset, short_row_simd):
    """fp32 sums stay exact to float rounding, also far from zero (the
    released formula itself would cancel catastrophically there in fp32).
    Both loops for short rows: AVX-512 (where the CPU has it) and generic."""
    x, weight, bias = random_case(SHAPES[name], torch.float32, offset)
    out = native.ext.layer_norm_released(
        x, weight, bias, 1e-5, short_row_simd=short_row_simd)
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out.double(), released_ln(x, weight, bias, 1e-5), rtol=1e-5, atol=2e-5)


def test_constant_input_gives_bias_and_eps_bounds_the_scale():
    x = torch.full((2, 3, 4, 4), 7.0, dtype=torch.float64)
    weight = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    bias = torch.tensor([0.5, -0.5, 0.0], dtype=torch.float64)
    out = native.layer_norm(x, weight, bias, 1e-5)
    torch.testing.assert_close(out, bias.view(1, 3, 1, 1).expand_as(x))


def test_non_contiguous_input():
    x, weight, bias = random_case((2, 8, 5, 6), torch.float32)
    x = x.to(memory_format=torch.channels_last)
    out = native.layer_norm(x, weight, bias, 1e-5)
    assert out.is_contiguous()
    torch.testing.assert_close(
        out.double(), released_ln(x, weight, bias, 1e-5), rtol=1e-5, atol=1e-5)


def test_bad_input_is_rejected_with_the_reason():
    x, weight, bias = random_case((2, 3, 4, 4), torch.float32)
    with pytest.raises(RuntimeError, match='float32 or float64 input'):
        native.ext.layer_norm_released(x.half(), weight, bias, 1e-5)
    with pytest.raises(RuntimeError, match='need 3 elements, got 4 and 3'):
        native.ext.layer_norm_released(x, torch.ones(4), bias, 1e-5)
    with pytest.raises(RuntimeError, match=r'must be \(N, C, \*\)'):
        native.ext.layer_norm_released(x[0, 0, 0], weight[:1], bias[:1], 1e-5)


def frozen_ln_ssn(channels, dtype):
    torch.manual_seed(0)
    layer = SSN(channels).to(dtype)
    with torch.no_grad():
        layer.weight.normal_(1, 0.3)
        layer.bias.normal_(0, 0.3)
        for logits in (layer.mean_weight, layer.var_weight):
            logits.copy_(torch.tensor([0.0, 1.0, 0.0]))
        layer.mean_fixed.fill_(1)
        layer.var_fixed.fill_(1)
    return layer.eval()


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []
    original = native.layer_norm

    def spy(x, *args):
        out = original(x, *args)
        if out is not None:
            calls.append(tuple(x.shape))
        return out

    monkeypatch.setattr(native, 'layer_norm', spy)
    return calls


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_frozen_ln_ssn_in_inference_uses_the_kernel(dtype, kernel_calls):
    """The frozen path on the 'cpp' provider: one kernel call, the value of
    the frozen path's passes on the 'eager' provider."""
    layer = frozen_ln_ssn(6, dtype)
    assert layer._selected() == (1, 1)
    x, _, _ = random_case((2, 6, 5, 5), dtype)
    with torch.no_grad():
        out = layer(x)
        assert kernel_calls == [tuple(x.shape)]
        with use_backend('eager'):
            general = layer(x)
    assert len(kernel_calls) == 1
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, general, rtol=tol, atol=tol)


def test_kernel_is_skipped_where_it_cannot_serve(kernel_calls):
    layer = frozen_ln_ssn(6, torch.float32)
    x, _, _ = random_case((2, 6, 5, 5), torch.float32)
    # Gradients wanted (the kernel has no backward): the reference path.
    x.requires_grad_()
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    with torch.no_grad():
        layer(x.detach().half())  # fp16: the 'eager' provider
        with use_backend('reference'):  # the reference stays pure PyTorch
            layer(x.detach())
    assert kernel_calls == []
    with torch.no_grad():
        layer(x.detach())
    assert kernel_calls == [tuple(x.shape)]
