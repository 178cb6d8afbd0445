import os

import pytest
import torch

# Keep two pytest-xdist workers from oversubscribing a 2-core machine.
torch.set_num_threads(max(1, int(os.environ.get('SSN_TEST_THREADS', '1'))))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
