#!/usr/bin/env python3
"""GPU acceptance check (run it through ``scripts/gpu_check.sh``): what a CUDA machine must show.

1. ``tests``: the device-parametrized tests (``pytest -m device``) on CUDA only (``FPN_TEST_DEVICES``);
2. ``train``: the ``synthetic`` preset for one epoch of 1200 images (300 iterations at its batch 4) in
   fp32, bf16 and fp16, each evaluated on 300 test images: losses finite and falling, mAP printed;
3. ``bench``: ``fpn bench`` for res101 at scale 600 against torchvision: training batch 2 fp32 and batch 8
   bf16, inference batch 1 fp32 and batch 8 bf16 (which times batch 1 in bf16 too): images/s, peak memory,
   ours / torchvision.

Everything goes to ``--out`` (default ``runs/gpu_check``): the runs, each command's output, and one
``report.json`` + ``report.md``. Exit code 0 when every check passed. ``--dry-run`` (or ``DRY=1``) runs
the same steps on the CPU with tiny sizes (res18 at scale 64, a 12-image dataset): everything but CUDA,
so the script itself is tested on any machine; its numbers are not GPU numbers.

Nothing but this repository and its installed requirements (torch, torchvision, pytest for the tests) is
needed; no download.
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
STEPS = ("tests", "train", "bench")
PRECISIONS = {"fp32": "none", "bf16": "bf16", "fp16": "fp16"}


@dataclass
class Plan:
    """What one mode runs."""

    device: str
    synth: tuple[int, int]  # train, test images of the generated dataset
    train_args: list[str]  # added to every `fpn train`
    bench_args: list[str]  # added to every `fpn bench`
    bench_runs: dict[str, list[str]]  # name -> its own flags
    timeout_s: dict[str, int] = field(default_factory=dict)  # per command of a step


FULL = Plan(
    device="cuda",
    synth=(1200, 300),  # 1200 images, each once (mirrored with probability 1/2), at batch 4: 300 iterations
    train_args=["--workers", "4", "--log-interval", "20"],
    bench_args=["--net", "res101", "--scale", "600", "--max-size", "1000", "--compare", "torchvision"],
    bench_runs={
        "train bs2 fp32": ["--mode", "train", "--bs", "2", "--amp", "none"],
        "train bs8 bf16": ["--mode", "train", "--bs", "8", "--amp", "bf16"],
        "infer bs1 fp32": ["--mode", "infer", "--bs", "1", "--amp", "none"],
        "infer bs8 bf16": ["--mode", "infer", "--bs", "8", "--amp", "bf16"],
    },
    timeout_s={"tests": 240, "train": 150, "bench": 150},
)
DRY = Plan(
    device="cpu",
    synth=(12, 6),
    train_args=["--workers", "0", "--log-interval", "2", "--bs", "2", "--set", "data.train_scales=128",
                "data.test_scale=128", "data.max_size=160", "model.rpn_batch_per_image=64",
                "model.roi_batch_per_image=32", "solver.warmup_iters=2"],  # fmt: skip
    bench_args=["--net", "res18", "--scale", "64", "--max-size", "96", "--compare", "torchvision", "--iters", "1",
                "--warmup", "0"],  # fmt: skip
    bench_runs={
        "train bs2 fp32": ["--mode", "train", "--bs", "2", "--amp", "none"],
        "train bs2 bf16": ["--mode", "train", "--bs", "2", "--amp", "bf16"],
        "infer bs1 fp32": ["--mode", "infer", "--bs", "1", "--amp", "none"],
        "infer bs2 bf16": ["--mode", "infer", "--bs", "2", "--amp", "bf16"],
    },
    timeout_s={"tests": 600, "train": 300, "bench": 300},
)


def run(cmd: list[str], log: Path, timeout: int, env: dict | None = None) -> dict:
    """Run ``cmd`` from the repository root, output to ``log``; {"cmd", "rc", "seconds", "timed_out"}."""
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


def tail(path: Path, lines: int = 3) -> list[str]:
    return Path(path).read_text(errors="replace").strip().splitlines()[-lines:]


def fpn(*args: str) -> list[str]:
    return [sys.executable, "-m", "fpn", *args]


# --- steps ----------------------------------------------------------------------------------------------------


def step_tests(plan: Plan, out: Path) -> dict:
    if importlib.util.find_spec("pytest") is None:
        return {"ok": False, "note": "pytest is not installed (pip install pytest)"}
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-m", "device", "-p", "no:cacheprovider", "tests"]
    r = run(cmd, out / "tests.log", plan.timeout_s["tests"], env={"FPN_TEST_DEVICES": plan.device})
    r["summary"] = tail(out / "tests.log", 1)[0] if tail(out / "tests.log", 1) else ""
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


def step_train(plan: Plan, out: Path) -> dict:
    data = out / "data"
    n_train, n_test = plan.synth
    gen = run(fpn("synth", "--out", str(data / "synthetic"), "--train", str(n_train), "--test", str(n_test)),
              out / "logs" / "synth.log", plan.timeout_s["train"])  # fmt: skip
    results: dict = {"generate": gen, "runs": {}}
    if gen["rc"] != 0:
        results["ok"] = False
        return results
    for name, amp in PRECISIONS.items():
        log = out / "logs" / f"train_{name}.log"
        sets = ["eval_at_end=True", "solver.epochs=1", f"data.synth_train={n_train}", f"data.synth_test={n_test}"]
        args = ["train", "--dataset", "synthetic", "--data-dir", str(data), "--save-dir", str(out / "runs"),
                "--exp-name", name, "--device", plan.device, "--amp", amp, "--no-progress", "--no-tensorboard",
                *plan.train_args]  # fmt: skip
        args += sets if "--set" in args else ["--set", *sets]
        r = run(fpn(*args), log, plan.timeout_s["train"])
        text = log.read_text(errors="replace")
        r["precision"] = next((s for s in text.splitlines() if s.startswith("precision: ")), "")
        if r["rc"] == 2 and amp == "bf16" and "--amp bf16:" in text:  # the device has no native bf16
            r.update(skipped=True, ok=True, note=tail(log, 1)[0])
        else:
            metrics = out / "runs" / "res18" / "synthetic" / name / "metrics.jsonl"
            if metrics.is_file():
                r.update(summarize_training(metrics))
            r["map_line"] = next((s for s in reversed(text.splitlines()) if s.startswith("mAP = ")), "")
            r["ok"] = r["rc"] == 0 and bool(r.get("finite")) and bool(r.get("falling")) and bool(r["map_line"])
        results["runs"][name] = r
    results["ok"] = all(r["ok"] for r in results["runs"].values())
    return results


def step_bench(plan: Plan, out: Path) -> dict:
    results: dict = {"runs": {}}
    for name, flags in plan.bench_runs.items():
        slug = name.replace(" ", "_")
        path = out / f"bench_{slug}.json"
        r = run(fpn("bench", "--device", plan.device, *plan.bench_args, *flags, "--json", str(path)),
                out / "logs" / f"bench_{slug}.log", plan.timeout_s["bench"])  # fmt: skip
        text = Path(r["log"]).read_text(errors="replace")
        if r["rc"] == 2 and "--amp bf16:" in text:
            r.update(skipped=True, ok=True, note=tail(Path(r["log"]), 1)[0])
        else:
            r["ok"] = r["rc"] == 0 and path.is_file()
            if r["ok"]:
                r["results"] = json.loads(path.read_text())
        results["runs"][name] = r
    results["ok"] = all(r["ok"] for r in results["runs"].values())
    return results


# --- report ---------------------------------------------------------------------------------------------------


def environment(device: str) -> dict:
    import torch
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}  # fmt: skip
    try:
        env["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        pass
    if device == "cuda" and torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda, gpu_count=torch.cuda.device_count())
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
    return "ok" if r.get("ok") else f"FAILED (exit {r.get('rc')}, {r.get('log')})"


def markdown(report: dict) -> str:
    env, steps = report["environment"], report["steps"]
    mode = "DRY RUN on the CPU (tiny sizes; not GPU numbers)" if report["dry_run"] else "CUDA"
    lines = [f"# GPU acceptance check: {'PASSED' if report['ok'] else 'FAILED'}", "",
             f"Mode: {mode}. {report['seconds']:.0f} s in all. " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    if "tests" in steps:
        t = steps["tests"]
        lines += ["## Device-parametrized tests", "", f"`{t.get('cmd', 'pytest -m device')}`: "
                  f"{t.get('summary') or t.get('note', '')} ({'ok' if t['ok'] else 'FAILED'})", ""]  # fmt: skip
    if "train" in steps:
        rows = []
        for name, r in steps["train"].get("runs", {}).items():
            if r.get("skipped"):
                rows.append([name, f"skipped: {r['note']}"])
                continue
            rows.append([name, r.get("precision", "")[len("precision: "):], r.get("iterations", "-"),
                         _fmt(r.get("first_loss")), _fmt(r.get("last_loss")), r.get("finite"), r.get("falling"),
                         _fmt(r.get("s_per_iter")), _fmt(r.get("map"), ".4f"), r["seconds"], _verdict(r)])  # fmt: skip
        columns = ["precision", "resolved", "iterations", "first loss", "last loss", "finite", "falling", "s/iter",
                   "mAP", "wall s", "check"]  # fmt: skip
        lines += ["## Synthetic preset, one epoch", "", *_table(columns, rows)]
    if "bench" in steps:
        rows = []
        for name, r in steps["bench"].get("runs", {}).items():
            if r.get("skipped") or not r["ok"]:
                rows.append([name, f"skipped: {r['note']}" if r.get("skipped") else _verdict(r)])
                continue
            res = r["results"]
            for key in (k for k in res if k.startswith("ours/")):
                what = key.split("/", 1)[1]
                ours, tv = res[key], res.get(f"torchvision/{what}", {})
                rows.append([f"{what}, {res['config']['precision'].split(' ')[0]}",
                             _fmt(ours.get("images_per_s"), ".2f"), _fmt(tv.get("images_per_s"), ".2f"),
                             _fmt(res.get(f"ratio/{what}"), ".2f"), _fmt(ours.get("peak_mem_gib"), ".2f"),
                             _fmt(tv.get("peak_mem_gib"), ".2f")])  # fmt: skip
        columns = ["run", "ours img/s", "torchvision img/s", "ours / torchvision", "ours peak GiB",
                   "torchvision peak GiB"]  # fmt: skip
        lines += ["## fpn bench against torchvision", "", *_table(columns, rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY", "") not in ("", "0"),
                   help="everything but CUDA, on the CPU with tiny sizes (also DRY=1)")  # fmt: skip
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check", help="output folder")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
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
    t0 = time.perf_counter()
    report = {"dry_run": args.dry_run, "environment": environment(plan.device), "steps": {}}
    runners = {"tests": step_tests, "train": step_train, "bench": step_bench}
    for name in steps:
        print(f"gpu_check: {name} ...", flush=True)
        t = time.perf_counter()
        report["steps"][name] = runners[name](plan, args.out)
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
