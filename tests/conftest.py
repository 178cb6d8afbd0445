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
    """Without the C++ kernels: the CPU's kernel provider is then 'eager'."""
    from ssn_norm.ops import providers
    monkeypatch.setattr(providers.PROVIDERS['cpp'], 'ext', None)


@pytest.fixture
def compiled_provider(monkeypatch):
    """The 'compiled' kernel provider through Dynamo for every input size,
    from the first call (no warm-up), without C++ compilation, and forced
    (``use_backend('compiled')``); yields the :class:`CountingBackend`
    that counts the graphs."""
    from ssn_norm.ops import providers, switchable_function
    counter = CountingBackend()
    monkeypatch.setattr(providers, 'MIN_COMPILED_NUMEL', 1)
    monkeypatch.setattr(providers, 'COMPILE_AFTER_NUMEL', 0)
    monkeypatch.setitem(providers.PROVIDERS, 'compiled',
                        providers.CompiledProvider(backend=counter))
    torch._dynamo.reset()
    with switchable_function.use_backend('compiled'):
        yield counter
    torch._dynamo.reset()
