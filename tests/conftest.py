import os

import pytest
import torch

# Keep CI (2 cores) from oversubscribing when pytest runs tests in one process.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
