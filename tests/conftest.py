import os

import pytest

# Two pytest-xdist workers on a 2-core machine: one thread each, also for the
# training subprocesses the end-to-end tests start.
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MKL_NUM_THREADS', '1')

import torch  # noqa: E402
from _helpers import DEVICES, CountingBackend  # noqa: E402

torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each device present: ``'cpu'``, and ``'cuda'`` when available
    (skipped with the reason shown otherwise)."""
    return request.param


@pytest.fixture
def no_native(monkeypatch):
    """Without the C++ kernels, which the ``compiled`` backend prefers on
    CPU: its compiled graphs and eager kernels run instead."""
    from ssn_norm.ops import native
    monkeypatch.setattr(native, '_ext', None)


@pytest.fixture
def dynamo_kernels(monkeypatch, no_native):
    """The ``compiled`` backend through Dynamo for every input size, from
    the first call (no warm-up, no C++ kernels), without C++ compilation;
    yields the
    :class:`CountingBackend` that counts the graphs."""
    from ssn_norm.ops import backend
    counter = CountingBackend()
    monkeypatch.setattr(backend, 'MIN_COMPILED_NUMEL', 1)
    monkeypatch.setattr(backend, 'COMPILE_AFTER_NUMEL', 0)
    monkeypatch.setattr(backend, '_COMPILED',
                        backend._CompiledKernels(backend=counter))
    monkeypatch.setattr(
        backend, '_COMPILED_SSN_RATIOS',
        backend._CompiledDifferentiable(
            backend.ratios_with_freezing_tensor, backend=counter))
    torch._dynamo.reset()
    yield counter
    torch._dynamo.reset()
