import pytest
import torch

# The tests use small tensors, where one thread is as fast as two and never oversubscribes the
# 2-core CI machine (subprocess tests also run with OMP_NUM_THREADS=1).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
