#!/usr/bin/env python3
"""GPU acceptance check (run it through ``scripts/gpu_check.sh``): everything a CUDA machine must show, in one call.

The check is a list of tasks run in order of value (a GPU is lent rarely and briefly: what matters most comes
first), each with a planned cost and a timeout; the plan is printed up front, and one task failing never skips
another:

1. ``tests``: the device-parametrized tests (``pytest -m device``) on CUDA only (``FPN_TEST_DEVICES``), a fallback
   of the Triton kernel made an error (``-W error:fpn:RuntimeWarning``);
2. ``triton``: the C toolchain Triton builds its launcher with (a compiler, Python's headers), one kernel compiled
   and run, and its kept sets against ``torchvision.ops.nms`` on the same device (random groups and IoUs within
   an ulp of the threshold): it says clearly when the fast path cannot run;
3. ``bench``: ``fpn bench --compare torchvision --profile`` with the same trained weights for both models (the
   first run pretrains torchvision's model and saves the weights, the later ones load them; a later run whose
   weights were not written pretrains them itself): R101-FPN at 600/1000 training batch 8 bf16 and inference
   batch 8 bf16 (with batch-1 latency and the fp32 same-weights agreement) first, then ``synthetic`` (4.), then
   R50-FPN at 800/1333 training batch 8 bf16 (the detectron2 / MLPerf setting) and R101 batch 2 fp32. Each run:
   images/s, ms per step, peak memory, detections and proposals per image, GPU kernel time, busy fraction,
   launches, aten ops, host syncs with their source lines, top kernels;
4. ``synthetic``: the ``synthetic`` preset end to end in bf16 (``fpn train --dataset synthetic``: generate the
   data, train the whole preset, evaluate): wall time, losses finite and falling, mAP;
5. ``train``: ``fpn train`` with the real data loader, R101 bs8 bf16, 150 iterations (600 synthetic images and
   their mirrors, ``data.flip``) at 600/800, so that batches are padded to the bench's 608 x 800 (or its
   transpose), its backbone the bench's pretrained one, the bench's pooler (``model.pool_aligned=False``, as
   converted torchvision weights), gradients clipped: images/s against the bench's step rate;
6. ``levers`` (only when asked for, ``--steps``): issue 20's before/after on the same weights.

Results worth keeping go to ``--out`` (default ``runs/gpu_check``), three files, well under 20 MB, rewritten after
every task (a call killed at its limit keeps what ran): ``report.md``, ``report.json`` and ``details.tar.gz`` (each
command's log, the bench JSON, the training metrics). Everything bulky (weights, checkpoints, datasets) and the
unpacked details go to ``--scratch`` (default ``$TMPDIR/fpn_gpu_check``, outside the repository; emptied at the
start). Exit code 0 when every task passed (tests pass, the Triton kernel runs and agrees, training finite and
falling with an mAP, every bench run completed with detections on the fast paths, same-weights agreement), 1
otherwise; speed targets are reported, not checked.

The budget: ``--budget`` seconds (default 450: under 8 minutes with start-up). The planned costs of the full plan
are the H200 run of 2026-12-04 (docs/PERFORMANCE.md; ../shared/reference) per step, plus each command's start-up
as measured in the CPU dry run (interpreter, imports, model build: host work, the same on a GPU box); they add
up to the budget (a test checks it). Each command gets its task's timeout or what is left, whichever is less.

``--dry-run`` (or ``DRY=1``) runs the same tasks on the CPU with tiny sizes (res18 at scale 64, 12-image
datasets, the Triton kernel in Triton's interpreter): everything but CUDA, so the script itself is tested on any
machine; its numbers are not GPU numbers, and its planned costs are this CPU's (2 cores, AMD EPYC).
Nothing but this repository and its requirements (torch, torchvision, pytest for the tests) is needed; no download.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("tests", "triton", "synthetic", "bench", "train", "levers")
DEFAULT_STEPS = STEPS[:-1]  # the levers (issue 20's before/after) only when asked for
# issue 20's levers off: frozen BatchNorm as its own pass, torchvision's per-level pooling and coordinate-offset
# NMS, NCHW (what commit 852f5ed ran)
PLAIN = ["runtime.fuse_frozen_bn=False", "runtime.pool_impl=torchvision", "runtime.nms_impl=offset",
         "runtime.channels_last=False"]  # fmt: skip
KEPT = ("report.md", "report.json", "details.tar.gz")  # all that --out holds
SCRATCH_MARK = ".fpn_gpu_check"  # a scratch folder this script made (and may empty)


@dataclass(frozen=True)
class Task:
    """One command of the plan: its step, its run's name within the step (bench, levers), the planned seconds and
    the timeout."""

    step: str
    name: str
    planned_s: int
    timeout_s: int


@dataclass
class Plan:
    """What one mode runs. ``bench_runs`` / ``lever_runs``: name -> (flags, the weights file it writes or reads:
    "save:F" / "load:F"); ``tasks``: the order and costs."""

    device: str
    synthetic_args: list[str]  # added to the synthetic preset's `fpn train`
    bench_runs: dict[str, tuple[list[str], str]]
    lever_runs: dict[str, tuple[list[str], str]]
    train_args: list[str]  # the real-loader `fpn train`
    train_images: int  # written by `fpn synth`; with data.flip each is seen twice per epoch
    train_reference: str  # the bench run whose saved weights (backbone) and step rate the real-loader run uses
    budget_s: int
    tasks: list[Task] = field(default_factory=list)

    @property
    def train_iterations(self) -> int:
        """The real-loader run's iterations: one epoch of the images and their mirrors (``data.flip``)."""
        batch = int(self.train_args[self.train_args.index("--bs") + 1])
        return self.train_images * 2 // batch


R101 = ["--net", "res101", "--scale", "600", "--max-size", "1000", "--compare", "torchvision", "--profile"]
# Planned costs on an H100/H200 (s): start-up ~12 s per command (interpreter, imports, CUDA context, model build;
# 8-10 s on the CPU dry run); the H200 run of 2026-12-04: R101 bs8 bf16 train 150-190 ms/step for both models, 100
# pretraining steps ~20 s, FLOP count, warm-up + 10 timed steps, the profile (host syncs, 5 profiled steps) ~25 s;
# the synthetic preset 301 steps x 0.042 s + generating 1200 images + evaluation; the real loader 150 steps x ~0.09 s
# + 600 images generated.
FULL = Plan(
    device="cuda",
    synthetic_args=["--workers", "8", "--log-interval", "50"],
    bench_runs={
        "r101 train bs8 bf16": ([*R101, "--mode", "train", "--bs", "8", "--amp", "bf16", "--pretrain-iters", "100"],
                                "save:tv_r101.pth"),  # fmt: skip
        "r101 infer bs8 bf16": ([*R101, "--mode", "infer", "--bs", "8", "--amp", "bf16"], "load:tv_r101.pth"),
        "r50 800/1333 train bs8 bf16": (["--net", "res50", "--scale", "800", "--max-size", "1333", "--compare",
                                         "torchvision", "--profile", "--mode", "train", "--bs", "8", "--amp", "bf16",
                                         "--pretrain-iters", "60"], "save:tv_r50.pth"),  # fmt: skip
        "r101 train bs2 fp32": ([*R101, "--mode", "train", "--bs", "2", "--amp", "none"], "load:tv_r101.pth"),
    },
    lever_runs={
        "r101 train bs8 bf16 plain": ([*R101, "--mode", "train", "--bs", "8", "--amp", "bf16", "--set", *PLAIN],
                                      "load:tv_r101.pth"),  # fmt: skip
        "r101 infer bs8 bf16 plain": ([*R101, "--mode", "infer", "--bs", "8", "--amp", "bf16", "--set", *PLAIN],
                                      "load:tv_r101.pth"),  # fmt: skip
        "r101 train bs8 bf16 compiled": ([*R101, "--mode", "train", "--bs", "8", "--amp", "bf16", "--set",
                                          "runtime.compile=inductor"], "load:tv_r101.pth"),  # fmt: skip
    },
    train_args=["--preset", "voc07_res101", "--bs", "8", "--amp", "bf16", "--workers", "12", "--log-interval", "10",
                "--set", "data.train_scales=600", "data.max_size=800", "model.pool_aligned=False",
                "solver.clip_grad_norm=10"],  # fmt: skip
    train_images=600,  # and their mirrors: 1200 samples, 150 iterations at batch 8
    train_reference="r101 train bs8 bf16",
    budget_s=450,
    tasks=[Task("tests", "", 40, 90), Task("triton", "", 15, 60),
           Task("bench", "r101 train bs8 bf16", 75, 120), Task("bench", "r101 infer bs8 bf16", 55, 100),
           Task("synthetic", "", 90, 150), Task("bench", "r50 800/1333 train bs8 bf16", 70, 120),
           Task("bench", "r101 train bs2 fp32", 45, 90), Task("train", "", 50, 100),
           Task("levers", "r101 train bs8 bf16 plain", 60, 100), Task("levers", "r101 infer bs8 bf16 plain", 45, 90),
           Task("levers", "r101 train bs8 bf16 compiled", 120, 150)],  # fmt: skip
)
TINY = ["--net", "res18", "--scale", "64", "--max-size", "96", "--compare", "torchvision", "--profile", "--iters", "1",
        "--warmup", "0", "--image-size", "160x120"]  # fmt: skip
# Planned costs: this script's dry run measured on a 2-core AMD EPYC shared with other work (load ~7, 2026-12-07:
# triton 10 s, bench 178 / 39 s, synthetic 52 s, train 18 s, levers 108 s; docs/PERFORMANCE.md).
DRY = Plan(
    device="cpu",
    synthetic_args=["--workers", "0", "--log-interval", "2", "--bs", "2", "--set", "data.synth_train=12",
                    "data.synth_test=6", "data.train_scales=128", "data.test_scale=128", "data.max_size=160",
                    "model.rpn_batch_per_image=64", "model.roi_batch_per_image=32",
                    "solver.warmup_iters=2"],  # fmt: skip
    bench_runs={
        "train bs2 fp32": ([*TINY, "--mode", "train", "--bs", "2", "--amp", "none", "--pretrain-iters", "20"],
                           "save:tv_r18.pth"),  # fmt: skip
        "infer bs2 auto": ([*TINY, "--mode", "infer", "--bs", "2", "--amp", "auto"], "load:tv_r18.pth"),  # bf16 if native
    },
    lever_runs={
        "train bs2 fp32 plain": ([*TINY, "--mode", "train", "--bs", "2", "--amp", "none", "--set", *PLAIN],
                                 "load:tv_r18.pth"),  # fmt: skip
    },
    train_args=["--preset", "voc07_res101", "--net", "res18", "--bs", "2", "--amp", "none", "--workers", "0",
                "--log-interval", "2", "--set", "data.train_scales=64", "data.max_size=96", "data.test_scale=64",
                "model.rpn_batch_per_image=64", "model.roi_batch_per_image=32", "solver.warmup_iters=2",
                "model.pool_aligned=False", "solver.clip_grad_norm=10"],  # fmt: skip
    train_images=6,  # 12 samples, 6 iterations at batch 2
    train_reference="train bs2 fp32",
    budget_s=900,
    tasks=[Task("tests", "", 60, 600), Task("triton", "", 15, 300), Task("bench", "train bs2 fp32", 120, 300),
           Task("bench", "infer bs2 auto", 40, 300), Task("synthetic", "", 50, 300), Task("train", "", 20, 300),
           Task("levers", "train bs2 fp32 plain", 60, 300)],  # fmt: skip
)


class Clock:
    """The call's time budget: each command gets its task's timeout or what is left, whichever is less."""

    def __init__(self, budget_s: float):
        self.end = time.monotonic() + budget_s

    def left(self) -> float:
        return self.end - time.monotonic()

    def timeout(self, step_timeout: int) -> int | None:
        """Seconds for the next command, or None when fewer than 15 remain (skip it)."""
        left = int(self.left())
        return None if left < 15 else min(step_timeout, left)


@dataclass
class Paths:
    """``out``: the results worth keeping (``KEPT``); ``scratch``: the bulk (weights, checkpoints, datasets) and
    ``details`` (logs, bench JSON, training metrics: bundled into ``out``/details.tar.gz)."""

    out: Path
    scratch: Path

    @property
    def details(self) -> Path:
        return self.scratch / "details"

    def log(self, name: str) -> Path:
        return self.details / "logs" / f"{name}.log"


def run(cmd: list[str], log: Path, timeout: int, env: dict | None = None) -> dict:
    """Run ``cmd`` from the repository root, output to ``log``; {"cmd", "rc", "seconds", "timed_out", "log"}."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    t0 = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
            timed_out = False
        except subprocess.TimeoutExpired:
            rc, timed_out = 124, True
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - t0, 1), "timed_out": timed_out,
            "log": str(log)}  # fmt: skip


def skipped(note: str) -> dict:
    return {"ok": False, "skipped": True, "note": note}


def tail(path: Path, lines: int = 3) -> list[str]:
    return Path(path).read_text(errors="replace").strip().splitlines()[-lines:]


def fpn(*args: str) -> list[str]:
    return [sys.executable, "-m", "fpn", *args]


# --- steps ----------------------------------------------------------------------------------------------------


def step_tests(plan: Plan, paths: Paths, timeout: int) -> dict:
    if importlib.util.find_spec("pytest") is None:
        return {"ok": False, "note": "pytest is not installed (pip install pytest)"}
    # a Triton kernel that cannot run warns once and falls back: an error here, so that it fails where it happens
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-m", "device", "-p", "no:cacheprovider",
           "-W", "error:fpn:RuntimeWarning", "tests"]  # fmt: skip
    r = run(cmd, paths.log("tests"), timeout, env={"FPN_TEST_DEVICES": plan.device})
    r["summary"] = (tail(Path(r["log"]), 1) or [""])[0]
    r["ok"] = r["rc"] == 0
    return r


def step_triton(plan: Plan, paths: Paths, timeout: int) -> dict:
    """The Triton probe (``triton_probe``) in its own process: a toolchain that crashes or hangs costs this task."""
    result = paths.details / "triton.json"
    env = {"TRITON_INTERPRET": "1"} if plan.device == "cpu" else {}  # a CPU runs Triton kernels interpreted
    r = run([sys.executable, str(Path(__file__).resolve()), "--triton-probe", plan.device, "--out", str(result)],
            paths.log("triton"), timeout, env)  # fmt: skip
    if result.is_file():
        r.update(json.loads(result.read_text()))
    r["ok"] = r["rc"] == 0 and bool(r.get("ok"))
    if not r["ok"] and not r.get("note"):
        r["note"] = (tail(Path(r["log"]), 1) or ["no output"])[0]
    return r


def _near_threshold_groups(torch, g, groups: int, k: int, threshold: float):
    """Boxes (groups, k, 4), sorted-by-score order, with many IoUs within a few ulps of ``threshold``: pairs that
    share a side and whose other sides differ by one float32 step around the width that makes IoU == threshold."""
    base = torch.rand(groups, k, 2, generator=g) * 64
    size = 4 + torch.rand(groups, k, 2, generator=g) * 28
    boxes = torch.cat([base, base + size], -1)
    # every other box: the previous one widened to IoU ~= threshold (w' = w / threshold), nudged by -2..2 ulps
    prev = boxes[:, 0::2].clone()
    wider = prev.clone()
    w = prev[..., 2] - prev[..., 0]
    nudge = torch.randint(-2, 3, w.shape, generator=g).float()
    target = prev[..., 0] + w / threshold
    wider[..., 2] = target + nudge * torch.finfo(torch.float32).eps * target.abs()
    boxes[:, 1::2] = wider[:, : boxes[:, 1::2].shape[1]]
    return boxes


def triton_probe(device_name: str) -> dict:
    """What a GPU check must know about the Triton NMS kernel before timing anything: the C toolchain Triton's
    launcher is built with (a C compiler and Python's headers), whether the kernel compiles and runs here
    (``fpn.model.ops.nms.triton_problem``, its fallback warning made an error), and whether its kept sets equal
    ``torchvision.ops.nms``'s on this device, also for IoUs within an ulp of the threshold."""
    import warnings

    import torch
    import torchvision

    out: dict = {"device": device_name}
    compiler = os.environ.get("CC") or next((shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    out["toolchain"] = {"cc": compiler, "python_h": headers.is_file()}
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not interpreted and (compiler is None or not headers.is_file()):
        missing = ([] if compiler else ["a C compiler (cc, gcc or clang; or $CC)"]) + (
            [] if headers.is_file() else [f"Python's headers ({headers}; the python3-dev package)"])
        out.update(ok=False, note=f"Triton cannot build its launcher: missing {' and '.join(missing)}; the NMS "
                   "falls back to torchvision's (a host sync per call)")  # fmt: skip
        return out
    from fpn.model.ops.nms import triton_problem

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the fallback's warning
        try:
            problem = triton_problem(device_name)
        except RuntimeWarning as w:
            problem = str(w)
    if problem is not None:
        out.update(ok=False, note=f"the Triton NMS kernel does not run here: {problem}")
        return out
    from fpn.model.ops.triton_nms import nms_sorted_groups

    device = torch.device(device_name)
    g = torch.Generator().manual_seed(0)
    mismatches, groups_checked, near = 0, 0, 0
    groups, sizes = (4, (24, 60)) if interpreted else (16, (64, 300))  # the interpreter runs NumPy: small
    for threshold in (0.5, 0.7):
        for k in sizes:
            boxes = _near_threshold_groups(torch, g, groups, k, threshold).to(device)
            counts = torch.full((groups,), k, dtype=torch.int32, device=device)
            keep = nms_sorted_groups(boxes, counts, threshold).cpu()
            scores = torch.arange(k, 0, -1, dtype=torch.float32, device=device)  # the given order
            for i in range(groups):
                ref = torch.zeros(k, dtype=torch.bool)
                ref[torchvision.ops.nms(boxes[i], scores, threshold).cpu()] = True
                mismatches += int(not torch.equal(keep[i], ref))
                groups_checked += 1
            iou = torchvision.ops.box_iou(boxes[:, 0::2].reshape(-1, 4), boxes[:, 1::2].reshape(-1, 4)).diagonal()
            near += int(((iou - threshold).abs() < 1e-6).sum())
    out.update(groups=groups_checked, near_threshold_pairs=near, mismatched_groups=mismatches,
               ok=mismatches == 0)  # fmt: skip
    if mismatches:
        out["note"] = f"the kernel's kept sets differ from torchvision's nms in {mismatches} of {groups_checked} groups"
    return out


def summarize_training(metrics: Path) -> dict:
    """From a run's metrics.jsonl: iterations, first/last logged loss, finite, falling (mean of the last
    third of the logged losses below the first third's), the median s/iteration and the mAP."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    losses = [r["loss"] for r in train]
    third = max(1, len(losses) // 3)
    finite = bool(losses) and all(math.isfinite(v) for v in losses)
    falling = finite and len(losses) >= 2 and statistics.mean(losses[-third:]) < statistics.mean(losses[:third])
    return {
        "iterations": train[-1]["iter"] if train else 0,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "finite": finite,
        "falling": falling,
        "s_per_iter": statistics.median(r["time"] for r in train) if train else None,
        "map": evals[-1]["map"] if evals else None,
    }


def _metrics_file(runs: Path, exp_name: str) -> Path | None:
    found = sorted(runs.glob(f"*/*/{exp_name}/metrics.jsonl"))
    return found[0] if found else None


def _keep_metrics(paths: Paths, exp_name: str) -> Path | None:
    """The run's metrics.jsonl, copied into the details (the run folder, with its checkpoints, stays in scratch)."""
    metrics = _metrics_file(paths.scratch / "runs", exp_name)
    if metrics is None:
        return None
    kept = paths.details / f"metrics_{exp_name}.jsonl"
    shutil.copyfile(metrics, kept)
    return kept


def step_synthetic(plan: Plan, paths: Paths, timeout: int) -> dict:
    """The synthetic preset as a user runs it: one command that generates, trains and evaluates (bf16)."""
    args = ["train", "--dataset", "synthetic", "--data-dir", str(paths.scratch / "data"), "--save-dir",
            str(paths.scratch / "runs"), "--exp-name", "synthetic_bf16", "--device", plan.device, "--amp", "bf16",
            "--no-progress", "--no-tensorboard", *plan.synthetic_args]  # fmt: skip
    r = run(fpn(*args), paths.log("synthetic"), timeout)
    text = Path(r["log"]).read_text(errors="replace")
    if r["rc"] == 2 and "--amp bf16:" in text:  # the device has no native bf16
        return {**r, "ok": True, "skipped": True, "note": tail(Path(r["log"]), 1)[0]}
    metrics = _keep_metrics(paths, "synthetic_bf16")
    if metrics is not None:
        r.update(summarize_training(metrics))
    r["wall_s"] = r["seconds"]
    r["ok"] = r["rc"] == 0 and bool(r.get("finite")) and bool(r.get("falling")) and r.get("map") is not None
    return r


FALLBACK_SIGNS = ("the Triton NMS kernel cannot run here",)  # a log line that says a fast path fell back


def bench_checks(res: dict, log_text: str = "") -> list[str]:
    """What is wrong with one bench result: runs whose models detect nothing, a failed agreement, a fast path
    that fell back (its warning in the log)."""
    problems = [f"{k}: no detections" for k, v in res.items()
                if isinstance(v, dict) and "representative" in v and not v["representative"]]  # fmt: skip
    if "agreement" in res and not res["agreement"]["ok"]:
        a = res["agreement"]
        problems.append(f"agreement: {a['detections'][0]} vs {a['detections'][1]} detections, {a.get('matched')} "
                        f"matched, {a.get('unmatched_confident')} confident ones unmatched, boxes within "
                        f"{a.get('max_box_px', 0):.2g} px, scores within {a.get('max_score', 0):.2g}")  # fmt: skip
    problems += [f"fell back: {sign}" for sign in FALLBACK_SIGNS if sign in log_text]
    return problems


def _pretrain_iters(plan: Plan, file: str) -> str:
    """The pretraining iterations of the bench run that saves ``file``."""
    for flags, weights in [*plan.bench_runs.values(), *plan.lever_runs.values()]:
        if weights == f"save:{file}" and "--pretrain-iters" in flags:
            return flags[flags.index("--pretrain-iters") + 1]
    return "0"


def step_bench_run(plan: Plan, paths: Paths, timeout: int, name: str, levers: bool = False) -> dict:
    """One bench run (``levers``: issue 20's before/after, where running out of time is a skip, not a failure).
    A run that should load weights an earlier run failed to write pretrains and saves them itself."""
    flags, weights = (plan.lever_runs if levers else plan.bench_runs)[name]
    slug = name.replace(" ", "_").replace("/", "-")
    path = paths.details / f"bench_{slug}.json"
    action, file = weights.split(":", 1)
    weights_file = paths.scratch / file
    note = None
    if action == "load" and not weights_file.is_file():
        action, note = "save", f"{file} was not written before: pretrained here"
        flags = [*flags, "--pretrain-iters", _pretrain_iters(plan, file)]
    wflags = ["--save-weights" if action == "save" else "--weights", str(weights_file)]
    r = run(fpn("bench", "--device", plan.device, *flags, *wflags, "--json", str(path)), paths.log(f"bench_{slug}"),
            timeout)  # fmt: skip
    if note:
        r["note"] = note
    text = Path(r["log"]).read_text(errors="replace")
    if r["rc"] == 2 and "--amp bf16:" in text:
        r.update(skipped=True, ok=True, note=tail(Path(r["log"]), 1)[0])
    elif r["timed_out"] and levers:
        r.update(skipped=True, ok=True, note=f"out of time after {r['seconds']} s")
    else:
        r["ok"] = r["rc"] == 0 and path.is_file()
        if r["ok"]:
            r["results"] = json.loads(path.read_text())
            r["problems"] = bench_checks(r["results"], text)
            r["ok"] = not r["problems"]
    return r


def save_backbone(tv_weights: Path, dest: Path) -> None:
    """The ResNet part of a torchvision Faster R-CNN state dict as a ResNet state dict (``--pretrained``)."""
    import torch

    state = torch.load(tv_weights, map_location="cpu", weights_only=True)
    prefix = "backbone.body."
    torch.save({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, dest)


def step_train(plan: Plan, paths: Paths, clock: Clock, timeout_s: int, bench: dict | None) -> dict:
    """``fpn train`` with the real loader on the bench's network and pretrained backbone: images/s."""
    weights = paths.scratch / plan.bench_runs[plan.train_reference][1].split(":", 1)[1]
    if not weights.is_file():
        return skipped(f"{weights.name} was not written (run the bench step first)")
    backbone = paths.scratch / "backbone.pth"
    save_backbone(weights, backbone)
    data = paths.scratch / "data_train"
    n = plan.train_images
    t0 = time.monotonic()
    gen = run(fpn("synth", "--out", str(data / "synthetic"), "--train", str(n), "--test", "8"),
              paths.log("train_synth"), timeout_s)  # fmt: skip
    if gen["rc"] != 0:
        return {**gen, "ok": False}
    timeout = clock.timeout(int(timeout_s - (time.monotonic() - t0)))
    if timeout is None:
        return skipped("out of time")
    args = ["train", "--dataset", "synthetic", "--data-dir", str(data), "--save-dir", str(paths.scratch / "runs"),
            "--exp-name", "real_loader", "--device", plan.device, "--pretrained", str(backbone), "--no-progress",
            "--no-tensorboard", *plan.train_args, f"data.synth_train={n}", "data.synth_test=8", "solver.epochs=1",
            "eval_at_end=False"]  # fmt: skip
    r = run(fpn(*args), paths.log("train_real_loader"), timeout)
    metrics = _keep_metrics(paths, "real_loader")
    if metrics is not None:
        r.update(summarize_training(metrics))
    r["planned_iterations"] = plan.train_iterations
    batch = int(plan.train_args[plan.train_args.index("--bs") + 1])
    if r.get("s_per_iter"):
        r["images_per_s"] = batch / r["s_per_iter"]
        bench_run = (bench or {}).get("runs", {}).get(plan.train_reference, {})
        ours = bench_run.get("results", {}).get(f"ours/train_bs{batch}")
        if ours:
            r["bench_images_per_s"] = ours["images_per_s"]
            r["vs_bench"] = r["images_per_s"] / ours["images_per_s"]
    r["ok"] = r["rc"] == 0 and bool(r.get("finite"))
    return r


# --- report ---------------------------------------------------------------------------------------------------


def environment(device: str) -> dict:
    import torch
    import torchvision

    env = {"python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
           "torchvision": torchvision.__version__, "cpu": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count()}  # fmt: skip
    try:
        env["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        pass
    if device == "cuda" and torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda, gpu_count=torch.cuda.device_count(),
                   cudnn=torch.backends.cudnn.version())  # fmt: skip
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True).stdout.strip()  # fmt: skip
    except OSError:
        pass
    if not env.get("commit"):  # a copied tree without .git (a lent GPU machine): say so, or take FPN_COMMIT
        env["commit"] = os.environ.get("FPN_COMMIT") or "unknown (no git checkout; set FPN_COMMIT)"
    return env


def _fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _table(columns: list[str], rows: list[list]) -> list[str]:
    """A markdown table; a row shorter than ``columns`` is padded with empty cells."""
    pad = [list(map(str, row)) + [""] * (len(columns) - len(row)) for row in rows]
    return ["| " + " | ".join(r) + " |" for r in [columns, ["---"] * len(columns), *pad]] + [""]


def _verdict(r: dict) -> str:
    if r.get("skipped"):
        return f"skipped: {r.get('note', '')}"
    if r.get("ok"):
        return "ok"
    problems = f": {'; '.join(r['problems'])}" if r.get("problems") else ""
    return f"FAILED (exit {r.get('rc')}, {r.get('log')}){problems}"


def _mean(values) -> float | None:
    return sum(values) / len(values) if values else None


BENCH_COLUMNS = ["run", "ours img/s", "torchvision img/s", "ours / tv", "ours ms/iter", "GPU ms/iter", "busy",
                 "launches/iter", "host syncs/iter", "det/img", "ours GiB", "tv GiB", "check"]  # fmt: skip


def _bench_rows(runs: dict) -> tuple[list[list], list[str]]:
    """The ``BENCH_COLUMNS`` rows of bench runs, and the lines under the table (sync sites, top kernels, latency,
    agreement)."""
    rows, extra = [], []
    for name, r in runs.items():
        if "results" not in r:
            rows.append([name, _verdict(r)])
            continue
        res = r["results"]
        precision = res["config"]["precision"].split(" ")[0]
        for key in (k for k in res if k.startswith("ours/")):
            what = key.split("/", 1)[1]
            ours, tv = res[key], res.get(f"torchvision/{what}", {})
            prof = ours.get("profile", {})
            syncs = ours.get("host_syncs", {})
            rows.append([f"{name}: {what}, {precision}", _fmt(ours.get("images_per_s"), ".1f"),
                         _fmt(tv.get("images_per_s"), ".1f"), _fmt(res.get(f"ratio/{what}"), ".2f"),
                         _fmt(ours.get("ms_per_iter"), ".1f"), _fmt(prof.get("gpu_ms_per_iter"), ".1f"),
                         _fmt(prof.get("busy"), ".0%"), _fmt(prof.get("launches_per_iter"), ".0f"),
                         _fmt(syncs.get("per_iter"), "d"), _fmt(_mean(ours.get("detections_per_image", [])), ".1f"),
                         _fmt(ours.get("peak_mem_gib"), ".1f"), _fmt(tv.get("peak_mem_gib"), ".1f"),
                         _verdict(r)])  # fmt: skip
            if syncs.get("sites"):
                sites = list(syncs["sites"].items())[:6]
                extra.append(f"- {name}, {what}: host syncs " + ", ".join(f"`{s}` x{n}" for s, n in sites))
            if prof.get("top_kernels"):
                extra.append(f"- {name}, {what}: top kernels " + ", ".join(
                    f"`{k['name'][:60]}` {k['ms_per_iter']:.1f} ms" for k in prof["top_kernels"][:5]))  # fmt: skip
        lat = res.get("latency_bs1", {})
        if "ours" in lat:
            extra.append(f"- {name}: batch-1 latency ours {lat['ours']['ms']:.1f} ms"
                         + (f", torchvision {lat['torchvision']['ms']:.1f} ms ({lat['ours']['vs_torchvision']:.2f}x)"
                            if "torchvision" in lat else ""))  # fmt: skip
        if "agreement" in res:
            a = res["agreement"]
            extra.append(f"- {name}: same-weights agreement {'ok' if a['ok'] else 'FAILED'} ({a['detections'][0]} vs "
                         f"{a['detections'][1]} detections, {a.get('matched', '?')} matched by IoU and label, boxes "
                         f"within {a['max_box_px']:.1e} px, scores within {a['max_score']:.1e}; unmatched above "
                         f"the threshold's margin: {a.get('unmatched_confident', '?')})")  # fmt: skip
    return rows, extra


def markdown(report: dict) -> str:
    env, steps = report["environment"], report["steps"]
    mode = "DRY RUN on the CPU (tiny sizes; not GPU numbers)" if report["dry_run"] else "CUDA"
    lines = [f"# GPU acceptance check: {'PASSED' if report['ok'] else 'FAILED'}", "",
             f"Mode: {mode}. {report['seconds']:.0f} s in all. " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    if report.get("plan"):
        rows = [[t["step"] + (f": {t['name']}" if t["name"] else ""), t["planned_s"], t["timeout_s"],
                 _fmt(t.get("seconds"), ".0f"), t.get("result", "not run")] for t in report["plan"]]  # fmt: skip
        planned = sum(t["planned_s"] for t in report["plan"])
        heading = f"## Plan: {planned} s planned of a {report['budget_s']} s budget, in order of value"
        lines += [heading, "", *_table(["task", "planned s", "timeout s", "took s", "result"], rows)]
    if "tests" in steps:
        t = steps["tests"]
        summary = f"`{t.get('cmd', 'pytest -m device')}`: {t.get('summary') or t.get('note', '')} ({_verdict(t)})"
        lines += ["## Device-parametrized tests", "", summary, ""]
    if "triton" in steps:
        t = steps["triton"]
        tool = t.get("toolchain", {})
        summary = (f"C compiler {tool.get('cc')}, Python.h {tool.get('python_h')}; {t.get('groups', 0)} groups "
                   f"({t.get('near_threshold_pairs', 0)} IoUs within 1e-6 of the threshold) against torchvision's "
                   f"nms, {t.get('mismatched_groups', '-')} differ ({_verdict(t)})")
        lines += ["## Triton NMS kernel", "", summary, ""]
    if "synthetic" in steps:
        s = steps["synthetic"]
        columns = ["wall s", "iterations", "first loss", "last loss", "finite", "falling", "s/iter", "mAP", "check"]
        row = [s.get("wall_s", "-"), s.get("iterations", "-"), _fmt(s.get("first_loss")), _fmt(s.get("last_loss")),
               s.get("finite"), s.get("falling"), _fmt(s.get("s_per_iter")), _fmt(s.get("map"), ".4f"), _verdict(s)]
        lines += ["## Synthetic preset end to end (generate, train, evaluate), bf16", "", *_table(columns, [row])]
    if "bench" in steps:
        rows, extra = _bench_rows(steps["bench"].get("runs", {}))
        lines += ["## fpn bench, same weights, against torchvision", "", *_table(BENCH_COLUMNS, rows), *extra, ""]
    if "levers" in steps:
        rows, extra = _bench_rows(steps["levers"].get("runs", {}))
        lines += ["## Issue 20's levers: off (`PLAIN`, 852f5ed's paths) and compiled, same weights", "",
                  *_table(BENCH_COLUMNS, rows), *extra, ""]  # fmt: skip
    if "train" in steps:
        t = steps["train"]
        columns = ["iterations", "planned", "s/iter", "images/s", "bench images/s", "vs bench", "finite", "check"]
        row = [t.get("iterations", "-"), t.get("planned_iterations", "-"), _fmt(t.get("s_per_iter")), _fmt(t.get("images_per_s"), ".1f"),
               _fmt(t.get("bench_images_per_s"), ".1f"), _fmt(t.get("vs_bench"), ".2f"), t.get("finite"), _verdict(t)]
        lines += ["## fpn train with the real loader", "", *_table(columns, [row])]
    return "\n".join(lines)


def prepare_scratch(scratch: Path) -> None:
    """An empty scratch folder outside the repository: one made by this script is emptied (weights left by an
    earlier call must not stand in for this one's); another non-empty folder is refused."""
    scratch = scratch.resolve()
    if scratch == ROOT or ROOT in scratch.parents:
        raise SystemExit(f"error: --scratch {scratch}: inside the repository; bulk files (weights, checkpoints, "
                         "datasets) go outside it")  # fmt: skip
    if scratch.exists() and any(scratch.iterdir()):
        if not (scratch / SCRATCH_MARK).is_file():
            raise SystemExit(f"error: --scratch {scratch}: not empty and not made by gpu_check; name another folder")
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / SCRATCH_MARK).write_text("made by scripts/gpu_check.py; emptied by its next call\n")


def write_results(report: dict, paths: Paths) -> None:
    """``report.json``, ``report.md`` and ``details.tar.gz`` (the details folder) into ``out``, each written to a
    temporary name and renamed."""
    paths.out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        if paths.details.is_dir():
            tar.add(paths.details, arcname="details")
    for name, data in [("report.json", (json.dumps(report, indent=2) + "\n").encode()),
                       ("report.md", (markdown(report) + "\n").encode()), ("details.tar.gz", buffer.getvalue())]:
        tmp = paths.out / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(paths.out / name)


def format_plan(tasks: list[Task], budget_s: int) -> str:
    total = sum(t.planned_s for t in tasks)
    lines = [f"gpu_check: plan, in order of value: {total} s planned of a {budget_s} s budget"]
    lines += [f"  {t.step + (': ' + t.name if t.name else ''):<40} {t.planned_s:>4} s (timeout {t.timeout_s} s)"
              for t in tasks]  # fmt: skip
    if total > budget_s:
        lines.append(f"  the plan is over the budget by {total - budget_s} s: the last tasks will likely be skipped")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY", "") not in ("", "0"),
                   help="everything but CUDA, on the CPU with tiny sizes (also DRY=1)")  # fmt: skip
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check",
                   help="the results worth keeping: report.md, report.json, details.tar.gz (default runs/gpu_check)")
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "fpn_gpu_check",
                   help="bulk files (weights, checkpoints, datasets) and the unpacked details, outside the "
                   "repository; emptied first (default $TMPDIR/fpn_gpu_check)")  # fmt: skip
    p.add_argument("--steps", default=",".join(DEFAULT_STEPS),
                   help=f"comma-separated subset of {','.join(STEPS)} (default: all but levers)")
    p.add_argument("--budget", type=int, help="seconds for the whole call (default 450; dry run 900)")
    p.add_argument("--triton-probe", metavar="DEVICE", help=argparse.SUPPRESS)  # the triton task's own process
    args = p.parse_args(argv)
    if args.triton_probe:
        result = triton_probe(args.triton_probe)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
        return 0 if result["ok"] else 1
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if any(s not in STEPS for s in steps):
        p.error(f"--steps {args.steps}: choose from {', '.join(STEPS)}")
    plan = DRY if args.dry_run else FULL
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA device visible; run with --dry-run (or DRY=1) to check the script on a CPU",
                  file=sys.stderr)  # fmt: skip
            return 2
    paths = Paths(args.out, args.scratch)
    prepare_scratch(paths.scratch)
    paths.details.mkdir(parents=True, exist_ok=True)
    budget = args.budget or plan.budget_s
    clock = Clock(budget)
    t0 = time.perf_counter()
    tasks = [t for t in plan.tasks if t.step in steps]
    print(format_plan(tasks, budget), flush=True)
    report: dict = {"dry_run": args.dry_run, "budget_s": budget, "scratch": str(paths.scratch),
                    "environment": environment(plan.device), "steps": {},
                    "plan": [{"step": t.step, "name": t.name, "planned_s": t.planned_s, "timeout_s": t.timeout_s}
                             for t in tasks]}  # fmt: skip
    for task, entry in zip(tasks, report["plan"]):
        label = task.step + (f": {task.name}" if task.name else "")
        print(f"gpu_check: {label} ...", flush=True)
        t = time.perf_counter()
        timeout = clock.timeout(task.timeout_s)
        if timeout is None:
            r = {**skipped("out of time"), "ok": task.step == "levers"}
        elif task.step == "tests":
            r = step_tests(plan, paths, timeout)
        elif task.step == "triton":
            r = step_triton(plan, paths, timeout)
        elif task.step == "synthetic":
            r = step_synthetic(plan, paths, timeout)
        elif task.step == "train":
            r = step_train(plan, paths, clock, timeout, report["steps"].get("bench"))
        else:
            r = step_bench_run(plan, paths, timeout, task.name, levers=task.step == "levers")
        if task.name:  # a run of a step that has several
            step = report["steps"].setdefault(task.step, {"runs": {}})
            step["runs"][task.name] = r
            step["ok"] = all(run["ok"] for run in step["runs"].values())
        else:
            report["steps"][task.step] = r
        entry.update(seconds=round(time.perf_counter() - t, 1), result=_verdict(r))
        print(f"gpu_check: {label} {'ok' if r['ok'] else 'FAILED'} ({entry['seconds']:.0f} s of {task.planned_s} "
              "planned)", flush=True)  # fmt: skip
        report["seconds"] = round(time.perf_counter() - t0, 1)
        report["ok"] = all(s["ok"] for s in report["steps"].values())
        write_results(report, paths)  # after every task: a call killed at its limit keeps what ran
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["ok"] = bool(report["steps"]) and all(s["ok"] for s in report["steps"].values())
    write_results(report, paths)
    print(f"gpu_check: {'PASSED' if report['ok'] else 'FAILED'} in {report['seconds']:.0f} s; report in "
          f"{paths.out / 'report.md'} (report.json, details.tar.gz); bulk and details in {paths.scratch}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
