#!/usr/bin/env python3
"""GPU acceptance check (run it through ``scripts/gpu_check.sh``): everything a CUDA machine must show, in one call.

1. ``tests``: the device-parametrized tests (``pytest -m device``) on CUDA only (``FPN_TEST_DEVICES``);
2. ``synthetic``: the ``synthetic`` preset end to end in bf16 (``fpn train --dataset synthetic``: generate the
   data, train the whole preset, evaluate): wall time, losses finite and falling, mAP;
3. ``bench``: ``fpn bench --compare torchvision --profile`` with the same trained weights for both models (the
   first run of a network pretrains torchvision's model and saves the weights, the later ones load them):
   R101-FPN at 600/1000: training batch 8 bf16, batch 2 fp32, inference batch 8 and 1 bf16 with batch-1 latency
   through ``fpn.Detector`` and the fp32 agreement check; R50-FPN at 800/1333 training batch 8 bf16 (the
   detectron2 / MLPerf setting). Each run: images/s, ms per step, peak memory, detections and proposals per
   image, GPU kernel time, busy fraction, launches, host syncs with their source lines, top kernels;
4. ``train``: ``fpn train`` with the real data loader, R101 bs8 bf16, ~150 steps on 1200 synthetic images at
   600/1000, its backbone the bench's pretrained one: images/s against the bench's step rate;
5. ``levers``: issue 20's before/after on the same weights: its levers switched off (``PLAIN``: what commit
   852f5ed ran) for training and inference, and ``runtime.compile=inductor``; last, and running out of time
   there is a skip, not a failure.

Everything goes to ``--out`` (default ``runs/gpu_check``): the runs, each command's log, and one ``report.json``
+ ``report.md``. Exit code 0 when every check passed (tests pass, training finite and falling with an mAP, every
bench run completed with detections, same-weights agreement), 1 otherwise; speed targets are reported, not
checked. The whole call keeps to ``--budget`` seconds (default 450: under 8 minutes with start-up): each command
gets what is left, and a step that no longer fits is reported as skipped (a failure).

``--dry-run`` (or ``DRY=1``) runs the same steps on the CPU with tiny sizes (res18 at scale 64, 12-image
datasets): everything but CUDA, so the script itself is tested on any machine; its numbers are not GPU numbers.
Nothing but this repository and its requirements (torch, torchvision, pytest for the tests) is needed; no download.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("tests", "synthetic", "bench", "train", "levers")
# issue 20's levers off: frozen BatchNorm as its own pass, torchvision's per-level pooling and coordinate-offset
# NMS, NCHW (what commit 852f5ed ran)
PLAIN = ["runtime.fuse_frozen_bn=False", "runtime.pool_impl=torchvision", "runtime.nms_impl=offset",
         "runtime.channels_last=False"]  # fmt: skip


@dataclass
class Plan:
    """What one mode runs. ``bench_runs``: name -> (flags, the weights file it writes or reads: "save:F" / "load:F")."""

    device: str
    synthetic_args: list[str]  # added to the synthetic preset's `fpn train`
    bench_runs: dict[str, tuple[list[str], str]]
    lever_runs: dict[str, tuple[list[str], str]]  # the same, for issue 20's before/after (last: may run out of time)
    train_args: list[str]  # the real-loader `fpn train`
    train_images: int
    train_reference: str  # the bench run whose saved weights (backbone) and step rate the real-loader run uses
    budget_s: int
    timeout_s: dict[str, int] = field(default_factory=dict)  # per command of a step


R101 = ["--net", "res101", "--scale", "600", "--max-size", "1000", "--compare", "torchvision", "--profile"]
FULL = Plan(
    device="cuda",
    synthetic_args=["--workers", "8", "--log-interval", "50"],
    bench_runs={
        "r101 train bs8 bf16": ([*R101, "--mode", "train", "--bs", "8", "--amp", "bf16", "--pretrain-iters", "100"],
                                "save:tv_r101.pth"),  # fmt: skip
        "r101 infer bs8 bf16": ([*R101, "--mode", "infer", "--bs", "8", "--amp", "bf16"], "load:tv_r101.pth"),
        "r101 train bs2 fp32": ([*R101, "--mode", "train", "--bs", "2", "--amp", "none"], "load:tv_r101.pth"),
        "r50 800/1333 train bs8 bf16": (["--net", "res50", "--scale", "800", "--max-size", "1333", "--compare",
                                         "torchvision", "--profile", "--mode", "train", "--bs", "8", "--amp", "bf16",
                                         "--pretrain-iters", "60"], "save:tv_r50.pth"),  # fmt: skip
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
                "--set", "data.train_scales=600", "data.max_size=1000"],  # fmt: skip
    train_images=1200,  # 150 iterations at batch 8
    train_reference="r101 train bs8 bf16",
    budget_s=450,
    timeout_s={"tests": 150, "synthetic": 180, "bench": 120, "train": 120},
)
TINY = ["--net", "res18", "--scale", "64", "--max-size", "96", "--compare", "torchvision", "--profile", "--iters", "1",
        "--warmup", "0", "--image-size", "160x120"]  # fmt: skip
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
                "model.rpn_batch_per_image=64", "model.roi_batch_per_image=32", "solver.warmup_iters=2"],  # fmt: skip
    train_images=12,
    train_reference="train bs2 fp32",
    budget_s=900,
    timeout_s={"tests": 600, "synthetic": 300, "bench": 300, "train": 300},
)


class Clock:
    """The call's time budget: each command gets its step's timeout or what is left, whichever is less."""

    def __init__(self, budget_s: float):
        self.end = time.monotonic() + budget_s

    def left(self) -> float:
        return self.end - time.monotonic()

    def timeout(self, step_timeout: int) -> int | None:
        """Seconds for the next command, or None when fewer than 15 remain (skip it)."""
        left = int(self.left())
        return None if left < 15 else min(step_timeout, left)


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


def step_tests(plan: Plan, out: Path, clock: Clock) -> dict:
    if importlib.util.find_spec("pytest") is None:
        return {"ok": False, "note": "pytest is not installed (pip install pytest)"}
    timeout = clock.timeout(plan.timeout_s["tests"])
    if timeout is None:
        return skipped("out of time")
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-m", "device", "-p", "no:cacheprovider", "tests"]
    r = run(cmd, out / "logs" / "tests.log", timeout, env={"FPN_TEST_DEVICES": plan.device})
    r["summary"] = (tail(Path(r["log"]), 1) or [""])[0]
    r["ok"] = r["rc"] == 0
    return r


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


def step_synthetic(plan: Plan, out: Path, clock: Clock) -> dict:
    """The synthetic preset as a user runs it: one command that generates, trains and evaluates (bf16)."""
    timeout = clock.timeout(plan.timeout_s["synthetic"])
    if timeout is None:
        return skipped("out of time")
    args = ["train", "--dataset", "synthetic", "--data-dir", str(out / "data"), "--save-dir", str(out / "runs"),
            "--exp-name", "synthetic_bf16", "--device", plan.device, "--amp", "bf16", "--no-progress",
            "--no-tensorboard", *plan.synthetic_args]  # fmt: skip
    r = run(fpn(*args), out / "logs" / "synthetic.log", timeout)
    text = Path(r["log"]).read_text(errors="replace")
    if r["rc"] == 2 and "--amp bf16:" in text:  # the device has no native bf16
        return {**r, "ok": True, "skipped": True, "note": tail(Path(r["log"]), 1)[0]}
    metrics = _metrics_file(out / "runs", "synthetic_bf16")
    if metrics is not None:
        r.update(summarize_training(metrics))
    r["wall_s"] = r["seconds"]
    r["ok"] = r["rc"] == 0 and bool(r.get("finite")) and bool(r.get("falling")) and r.get("map") is not None
    return r


def bench_checks(res: dict) -> list[str]:
    """What is wrong with one bench result: runs whose models detect nothing, a failed agreement."""
    problems = [f"{k}: no detections" for k, v in res.items()
                if isinstance(v, dict) and "representative" in v and not v["representative"]]  # fmt: skip
    if "agreement" in res and not res["agreement"]["ok"]:
        problems.append(f"agreement: {res['agreement']}")
    return problems


def step_bench(plan: Plan, out: Path, clock: Clock, levers: bool = False) -> dict:
    """The bench runs (``levers``: the before/after runs, where running out of time is a skip, not a failure)."""
    results: dict = {"runs": {}}
    for name, (flags, weights) in (plan.lever_runs if levers else plan.bench_runs).items():
        slug = name.replace(" ", "_").replace("/", "-")
        path = out / f"bench_{slug}.json"
        action, file = weights.split(":", 1)
        weights_file = out / file
        timeout = clock.timeout(plan.timeout_s["bench"])
        if timeout is None:
            results["runs"][name] = {**skipped("out of time"), "ok": levers}
            continue
        if action == "load" and not weights_file.is_file():
            results["runs"][name] = skipped(f"{file} was not written (its pretraining run failed)")
            continue
        wflags = ["--save-weights" if action == "save" else "--weights", str(weights_file)]
        r = run(fpn("bench", "--device", plan.device, *flags, *wflags, "--json", str(path)),
                out / "logs" / f"bench_{slug}.log", timeout)  # fmt: skip
        text = Path(r["log"]).read_text(errors="replace")
        if r["rc"] == 2 and "--amp bf16:" in text:
            r.update(skipped=True, ok=True, note=tail(Path(r["log"]), 1)[0])
        elif r["timed_out"] and levers:
            r.update(skipped=True, ok=True, note=f"out of time after {r['seconds']} s")
        else:
            r["ok"] = r["rc"] == 0 and path.is_file()
            if r["ok"]:
                r["results"] = json.loads(path.read_text())
                r["problems"] = bench_checks(r["results"])
                r["ok"] = not r["problems"]
        results["runs"][name] = r
    results["ok"] = all(r["ok"] for r in results["runs"].values())
    return results


def save_backbone(tv_weights: Path, dest: Path) -> None:
    """The ResNet part of a torchvision Faster R-CNN state dict as a ResNet state dict (``--pretrained``)."""
    import torch

    state = torch.load(tv_weights, map_location="cpu", weights_only=True)
    prefix = "backbone.body."
    torch.save({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, dest)


def step_train(plan: Plan, out: Path, clock: Clock, bench: dict | None) -> dict:
    """``fpn train`` with the real loader on the bench's network and pretrained backbone: images/s."""
    timeout = clock.timeout(plan.timeout_s["train"])
    if timeout is None:
        return skipped("out of time")
    weights = out / plan.bench_runs[plan.train_reference][1].split(":", 1)[1]
    if not weights.is_file():
        return skipped(f"{weights.name} was not written (run the bench step first)")
    backbone = out / "backbone.pth"
    save_backbone(weights, backbone)
    data = out / "data_train"
    n = plan.train_images
    gen = run(fpn("synth", "--out", str(data / "synthetic"), "--train", str(n), "--test", "8"),
              out / "logs" / "train_synth.log", timeout)  # fmt: skip
    if gen["rc"] != 0:
        return {**gen, "ok": False}
    timeout = clock.timeout(plan.timeout_s["train"])
    if timeout is None:
        return skipped("out of time")
    args = ["train", "--dataset", "synthetic", "--data-dir", str(data), "--save-dir", str(out / "runs"),
            "--exp-name", "real_loader", "--device", plan.device, "--pretrained", str(backbone), "--no-progress",
            "--no-tensorboard", *plan.train_args, f"data.synth_train={n}", "data.synth_test=8", "solver.epochs=1",
            "eval_at_end=False"]  # fmt: skip
    r = run(fpn(*args), out / "logs" / "train_real_loader.log", timeout)
    metrics = _metrics_file(out / "runs", "real_loader")
    if metrics is not None:
        r.update(summarize_training(metrics))
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
                         f"{a['detections'][1]} detections, boxes within {a['max_box_px']:.1e} px)")  # fmt: skip
    return rows, extra


def markdown(report: dict) -> str:
    env, steps = report["environment"], report["steps"]
    mode = "DRY RUN on the CPU (tiny sizes; not GPU numbers)" if report["dry_run"] else "CUDA"
    lines = [f"# GPU acceptance check: {'PASSED' if report['ok'] else 'FAILED'}", "",
             f"Mode: {mode}. {report['seconds']:.0f} s in all. " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    if "tests" in steps:
        t = steps["tests"]
        lines += ["## Device-parametrized tests", "", f"`{t.get('cmd', 'pytest -m device')}`: "
                  f"{t.get('summary') or t.get('note', '')} ({_verdict(t)})", ""]  # fmt: skip
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
        columns = ["iterations", "s/iter", "images/s", "bench images/s", "vs bench", "finite", "check"]
        row = [t.get("iterations", "-"), _fmt(t.get("s_per_iter")), _fmt(t.get("images_per_s"), ".1f"),
               _fmt(t.get("bench_images_per_s"), ".1f"), _fmt(t.get("vs_bench"), ".2f"), t.get("finite"), _verdict(t)]
        lines += ["## fpn train with the real loader", "", *_table(columns, [row])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY", "") not in ("", "0"),
                   help="everything but CUDA, on the CPU with tiny sizes (also DRY=1)")  # fmt: skip
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check", help="output folder")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--budget", type=int, help="seconds for the whole call (default 450; dry run 900)")
    args = p.parse_args(argv)
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
    args.out.mkdir(parents=True, exist_ok=True)
    clock = Clock(args.budget or plan.budget_s)
    t0 = time.perf_counter()
    report = {"dry_run": args.dry_run, "environment": environment(plan.device), "steps": {}}
    runners = {"tests": step_tests, "synthetic": step_synthetic, "bench": step_bench,
               "train": lambda plan, out, clock: step_train(plan, out, clock, report["steps"].get("bench")),
               "levers": lambda plan, out, clock: step_bench(plan, out, clock, levers=True)}  # fmt: skip
    for name in [s for s in STEPS if s in steps]:  # in STEPS' order: train reads the bench's weights
        print(f"gpu_check: {name} ...", flush=True)
        t = time.perf_counter()
        report["steps"][name] = runners[name](plan, args.out, clock)
        print(f"gpu_check: {name} {'ok' if report['steps'][name]['ok'] else 'FAILED'} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)  # fmt: skip
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["ok"] = all(s["ok"] for s in report["steps"].values())
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.md").write_text(markdown(report) + "\n")
    print(f"gpu_check: {'PASSED' if report['ok'] else 'FAILED'} in {report['seconds']:.0f} s; "
          f"report in {args.out / 'report.md'} and report.json")  # fmt: skip
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
