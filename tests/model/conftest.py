import pytest
import torch

from tiny_model import small_config
from fpn.config import Config


@pytest.fixture(autouse=True)
def model_tests_in_one_thread(one_thread):
    """The model tests are small; on two shared cores one thread avoids OpenMP oversubscription stalls."""


@pytest.fixture
def small_cfg() -> Config:
    torch.manual_seed(0)
    return small_config()
