"""Where a GPU step's time goes: kernel time, busy fraction, launches, host syncs and their source lines.

``fpn bench --profile`` reports, per timed run on CUDA (:func:`profile_cuda`):

* ``gpu_ms_per_iter``: the summed duration of the GPU's kernels and copies, per iteration;
* ``busy``: the fraction of the wall time during which at least one of them ran (the rest is the GPU waiting for
  the host: launch overhead, host syncs, Python);
* ``launches_per_iter`` and ``syncs_per_iter``: the CUDA runtime calls that launch a kernel, and those that make
  the host wait for the GPU (stream, device and event synchronisation, synchronous copies);
* ``top_kernels``: the kernels that took the most time;
* ``host_syncs``: one iteration under ``torch.cuda.set_sync_debug_mode("warn")``, each warning attributed to the
  innermost source line of this project (or torchvision) that caused it (:func:`cuda_sync_sites`).

On a CPU the same ``host_syncs`` come from ``fpn.perf.host_sync.count_host_syncs`` (the operations that would
wait for a GPU), so the report has them everywhere.
"""

from __future__ import annotations

import contextlib
import time
import traceback
import warnings
from collections import Counter, defaultdict

import torch

from fpn.perf.host_sync import count_host_syncs, project_site

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaGraphLaunch")
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def busy_time_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (overlapping kernels on several streams count once)."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def summarize_events(events, iters: int, wall_s: float, top: int = 10) -> dict:
    """The profile figures (module docstring) of profiler ``events`` (``FunctionEvent``s: ``name``,
    ``device_type``, ``time_range.start`` / ``.end`` in us) covering ``iters`` iterations in ``wall_s`` seconds."""
    gpu, per_kernel, calls = [], defaultdict(float), Counter()
    launches = syncs = 0
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            start, end = e.time_range.start, e.time_range.end
            gpu.append((start, end))
            per_kernel[e.name] += end - start
            calls[e.name] += 1
        elif e.name in LAUNCHES:
            launches += 1
        elif e.name in SYNCS:
            syncs += 1
    kernel_us = sum(e - s for s, e in gpu)
    wall_us = wall_s * 1e6
    return {
        "iters": iters,
        "wall_ms_per_iter": wall_us / iters / 1e3,
        "gpu_ms_per_iter": kernel_us / iters / 1e3,
        "busy": busy_time_us(gpu) / wall_us if wall_us else 0.0,
        "launches_per_iter": launches / iters,
        "syncs_per_iter": syncs / iters,
        "top_kernels": [{"name": name[:120], "ms_per_iter": us / iters / 1e3, "calls_per_iter": calls[name] / iters}
                        for name, us in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:top]],  # fmt: skip
    }


def profile_cuda(fn, iters: int, device: torch.device) -> dict:
    """:func:`summarize_events` of ``iters`` calls of ``fn`` under the PyTorch profiler (CPU + CUDA activity)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
    return summarize_events(prof.events(), iters, wall)


@contextlib.contextmanager
def cuda_sync_sites():
    """``with cuda_sync_sites() as sites: ...``: a Counter {"path:line": syncs} of the synchronising CUDA operations
    run inside (``torch.cuda.set_sync_debug_mode("warn")``), by the innermost line of this project or torchvision.
    Other warnings pass through."""
    sites: Counter = Counter()
    cuda = torch.cuda.is_available()  # without CUDA nothing syncs (and asking for the mode would initialise CUDA)
    previous = torch.cuda.get_sync_debug_mode() if cuda else 0
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        show = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            if "synchroniz" in str(message):
                sites[project_site(traceback.extract_stack()[:-1])] += 1
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = record
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            yield sites
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(previous)


def host_syncs(fn, device: torch.device) -> dict:
    """The host syncs of one call of ``fn``: {"per_iter", "sites": {"path:line": n}, "method"}."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        with cuda_sync_sites() as sites:  # the op that syncs warns as it runs: nothing to wait for at the end
            fn()
        return {"per_iter": sum(sites.values()), "sites": dict(sites.most_common()),
                "method": "torch.cuda.set_sync_debug_mode"}  # fmt: skip
    with count_host_syncs() as syncs:
        fn()
    return {"per_iter": syncs.total, "sites": dict(syncs.by_site.most_common()),
            "method": "fpn.perf.host_sync.count_host_syncs (the ops that would wait for a GPU)"}  # fmt: skip
