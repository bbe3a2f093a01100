import pytest
import torch

from fpn.engine.device import autocast, make_scaler, resolve_device
from fpn.errors import UserError


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="--device tpu: expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda: CUDA is not available"):
            resolve_device("cuda")


def test_autocast_and_scaler():
    cpu = torch.device("cpu")
    a, b = torch.ones(2, 2), torch.ones(2, 2)
    with autocast(cpu, "none"):
        assert (a @ b).dtype == torch.float32
    with autocast(cpu, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    assert not make_scaler(cpu, "bf16").is_enabled()
    assert make_scaler(cpu, "fp16").is_enabled()
    with pytest.raises(UserError, match="--amp fp8"):
        autocast(cpu, "fp8")
