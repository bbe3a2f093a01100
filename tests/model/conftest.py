import pytest
import torch

from detector_helpers import small_config
from fpn.config import Config


@pytest.fixture(autouse=True)
def one_thread():
    """The model tests are small; on two shared cores one thread avoids OpenMP oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_cfg() -> Config:
    torch.manual_seed(0)
    return small_config()
