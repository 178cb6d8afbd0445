import os

import pytest

# Two pytest-xdist workers on a 2-core machine: one thread each, also for the
# training subprocesses the end-to-end tests start.
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MKL_NUM_THREADS', '1')

import torch  # noqa: E402
from _helpers import DEVICES  # noqa: E402

torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each device present: ``'cpu'``, and ``'cuda'`` when available
    (skipped with the reason shown otherwise)."""
    return request.param
