import pytest
import torch

from fpn.engine.device import autocast, make_scaler, prepare_for_speed, resolve_device
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


def _fake_cpu(monkeypatch, native: bool):
    from fpn.engine import device as D

    what = "CPU with AMX" if native else "CPU without native bf16"
    monkeypatch.setattr(D, "cpu_bf16_support", lambda: (native, what))


def test_auto_precision_on_cpu(monkeypatch):
    from fpn.engine.device import resolve_precision

    cpu = torch.device("cpu")
    _fake_cpu(monkeypatch, native=True)
    assert resolve_precision("auto", cpu).amp == "bf16"
    assert str(resolve_precision("auto", cpu)) == "bf16 (CPU with AMX)"
    _fake_cpu(monkeypatch, native=False)
    p = resolve_precision("auto", cpu)
    assert (p.amp, str(p)) == ("none", "fp32 (CPU without native bf16)")
    assert resolve_precision("fp16", cpu).amp == "fp16"  # allowed on a CPU (slow; tests use it)
    assert resolve_precision("none", cpu).amp == "none"
    with pytest.raises(UserError, match=r"^--amp bf16: CPU without native bf16, .*use --amp auto or none"):
        resolve_precision("bf16", cpu)


def test_cpu_bf16_probe_respects_isa_caps(monkeypatch):
    from fpn.engine import device as D

    D.cpu_bf16_support.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert D.cpu_bf16_support() == (False, "CPU has AMX but ONEDNN_MAX_CPU_ISA=AVX2")
    D.cpu_bf16_support.cache_clear()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert D.cpu_bf16_support() == (True, "CPU with AMX")
    D.cpu_bf16_support.cache_clear()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert D.cpu_bf16_support() == (False, "CPU has AMX but torch runs AVX2 kernels")
    D.cpu_bf16_support.cache_clear()


def test_cuda_n_becomes_the_current_device_and_training_tunes_cudnn(monkeypatch):
    """``--device cuda:1`` outside torchrun makes device 1 current (Triton and device-less torch.cuda calls follow
    it); ``prepare_for_speed`` turns cuDNN's autotuner on for CUDA only."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(torch.device(d)))
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and chosen == [torch.device("cuda", 1)]
    assert resolve_device("cuda") == torch.device("cuda") and len(chosen) == 1  # no index: the current one stays
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    prepare_for_speed(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    prepare_for_speed(torch.device("cuda", 1))
    assert torch.backends.cudnn.benchmark is True
