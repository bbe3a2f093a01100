"""The profile's arithmetic on made-up events (the profiler itself needs CUDA: scripts/gpu_check.sh runs it)."""

import warnings
from types import SimpleNamespace

import pytest
import torch

from fpn.perf.cuda_profile import busy_time_us, cuda_sync_sites, host_syncs, summarize_events

CUDA, CPU = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU


def _event(name, device, start=0.0, end=0.0):
    return SimpleNamespace(name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end))


def test_busy_time_counts_overlapping_kernels_once():
    assert busy_time_us([(0, 10), (5, 15), (20, 30), (22, 25)]) == 25
    assert busy_time_us([]) == 0


def test_summarize_events_per_iteration():
    events = [_event("gemm", CUDA, 0, 400), _event("relu", CUDA, 300, 500), _event("gemm", CUDA, 1000, 1400),
              _event("cudaLaunchKernel", CPU), _event("cudaLaunchKernel", CPU), _event("cuLaunchKernel", CPU),
              _event("cudaStreamSynchronize", CPU), _event("aten::mul", CPU)]  # fmt: skip
    p = summarize_events(events, iters=2, wall_s=0.002)
    assert p["gpu_ms_per_iter"] == pytest.approx((400 + 200 + 400) / 2 / 1e3)
    assert p["busy"] == pytest.approx(900 / 2000)  # 0..500 and 1000..1400 of 2000 us
    assert (p["launches_per_iter"], p["syncs_per_iter"], p["wall_ms_per_iter"]) == (1.5, 0.5, 1.0)
    assert [k["name"] for k in p["top_kernels"]] == ["gemm", "relu"] and p["top_kernels"][0]["calls_per_iter"] == 1


def _syncing_op():
    warnings.warn("called a synchronizing CUDA operation", UserWarning)  # what set_sync_debug_mode("warn") raises


def test_cuda_sync_sites_names_this_projects_line_and_lets_other_warnings_through():
    with pytest.warns(DeprecationWarning, match="other"):
        with cuda_sync_sites() as sites:
            _syncing_op()
            _syncing_op()
            warnings.warn("other", DeprecationWarning)
    ((site, n),) = sites.items()
    assert site.startswith("tests/perf/test_cuda_profile.py:") and n == 2


def test_host_syncs_on_a_cpu_counts_what_would_wait_for_a_gpu():
    x = torch.arange(6.0)
    res = host_syncs(lambda: x[x > 2].sum().item(), torch.device("cpu"))  # a boolean mask, a scalar read
    assert res["per_iter"] == 2 and "count_host_syncs" in res["method"]
    assert all(site.startswith("tests/perf/test_cuda_profile.py:") for site in res["sites"])
