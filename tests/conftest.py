import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Full-size models on two shared cores: one thread avoids OpenMP oversubscription stalls (several times slower
    otherwise; tests/model runs every test this way)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
