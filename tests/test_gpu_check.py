"""scripts/gpu_check.py: its pieces, and the whole script as a CPU dry run (all steps but the device tests)."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = sys.modules["gpu_check"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(gpu_check)


def _metrics(path, losses, map_=0.5):
    lines = [{"type": "train", "iter": 10 * (i + 1), "loss": v, "time": 0.1 + i / 100} for i, v in enumerate(losses)]
    lines += [{"type": "eval", "map": map_}] if map_ is not None else []
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_training_summary_finite_falling_and_map(tmp_path):
    s = gpu_check.summarize_training(_metrics(tmp_path / "m.jsonl", [3.0, 2.5, 2.6, 1.9, 1.2, 1.0]))
    assert (s["iterations"], s["first_loss"], s["last_loss"], s["map"]) == (60, 3.0, 1.0, 0.5)
    assert s["finite"] and s["falling"] and s["s_per_iter"] == pytest.approx(0.125)
    rising = gpu_check.summarize_training(_metrics(tmp_path / "r.jsonl", [1.0, 1.1, 1.2, 1.5, 2.0, 2.2]))
    assert rising["finite"] and not rising["falling"]
    nan = gpu_check.summarize_training(_metrics(tmp_path / "n.jsonl", [3.0, float("nan"), 1.0], map_=None))
    assert not nan["finite"] and not nan["falling"] and nan["map"] is None


def test_bench_checks_fail_models_that_detect_nothing_and_disagreement():
    ok = {"ours/infer_bs8": {"representative": True}, "agreement": {"ok": True}}
    assert gpu_check.bench_checks(ok) == []
    bad = {"ours/infer_bs8": {"representative": False},
           "agreement": {"ok": False, "detections": [3, 4], "matched": 3, "unmatched_confident": 1, "max_box_px": 0.25,
                         "max_score": 0.001}}  # fmt: skip
    problems = gpu_check.bench_checks(bad)
    disagreement = ("agreement: 3 vs 4 detections, 3 matched, 1 confident ones unmatched, boxes within 0.25 px, "
                    "scores within 0.001")
    assert problems == ["ours/infer_bs8: no detections", disagreement]


def test_clock_gives_each_command_what_is_left_and_skips_when_out_of_time():
    clock = gpu_check.Clock(100)
    assert gpu_check.Clock(100).timeout(30) == 30 and 90 <= clock.timeout(150) <= 100
    assert gpu_check.Clock(10).timeout(30) is None


def _tables(md: str) -> dict[str, list[dict[str, str]]]:
    """The markdown tables of a report by section heading: a list of {column: cell} rows."""
    tables, heading, block = {}, None, []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if block:
            header, rows = block[0], block[2:]
            assert set(block[1]) == {"---"} and all(len(r) == len(header) for r in rows), block
            tables[heading] = [dict(zip(header, r)) for r in rows]
            block = []
        if line.startswith("## "):
            heading = line[3:]
    return tables


def _agrees(cell: str, value) -> bool:
    """A table cell shows ``value`` (None: "-"; "80%": 0.8), to the digits the cell has."""
    if value is None or isinstance(value, bool):
        return cell == ("-" if value is None else str(value))
    scale = 100 if cell.endswith("%") else 1
    text = cell.rstrip("%")
    mantissa = text.lower().split("e")[0]
    digits = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(text.lower().split("e")[1]) if "e" in text.lower() else 0
    return abs(float(text) - value * scale) <= 0.51 * 10.0 ** (exponent - digits)


def _check_markdown_shows_the_report(report: dict, md: str) -> None:
    """report.md against report.json: the verdict, and every number of its tables from the report's own values;
    the ratios recomputed from the images/s they divide, not read from the report's ratio fields."""
    steps, tables = report["steps"], _tables(md)
    assert md.splitlines()[0].endswith("PASSED" if report["ok"] else "FAILED")
    if "tests" in steps:
        assert steps["tests"].get("summary", steps["tests"].get("note", "")) in md
    if "synthetic" in steps:
        s = steps["synthetic"]
        (row,) = next(rows for heading, rows in tables.items() if heading.startswith("Synthetic preset"))
        for column, key in [("iterations", "iterations"), ("first loss", "first_loss"), ("last loss", "last_loss"),
                            ("s/iter", "s_per_iter"), ("mAP", "map")]:
            assert _agrees(row[column], s.get(key)), (column, row[column], s.get(key))  # fmt: skip
        assert (row["finite"], row["falling"]) == (str(s.get("finite")), str(s.get("falling")))
        assert _agrees(row["wall s"], s.get("wall_s")) and (row["check"] == "ok") == (s["ok"] and not s.get("skipped"))
    for step, heading in [("bench", "fpn bench"), ("levers", "Issue 20's levers")]:
        if step not in steps:
            continue
        rows = next(rows for h, rows in tables.items() if h.startswith(heading))
        for name, r in steps[step]["runs"].items():
            if "results" not in r:  # one row: the name and why it did not run
                (row,) = [row for row in rows if row["run"] == name]
                assert row["ours img/s"].startswith("skipped: " if r.get("skipped") else "FAILED")
                assert r.get("note", "") in row["ours img/s"]
                continue
            res = r["results"]
            for key in [k for k in res if k.startswith("ours/")]:
                what = key.split("/", 1)[1]
                ours, tv = res[key], res.get(f"torchvision/{what}", {})
                (row,) = [row for row in rows if row["run"].startswith(f"{name}: {what}, ")]
                assert _agrees(row["ours img/s"], ours["images_per_s"])
                assert _agrees(row["ours ms/iter"], ours["ms_per_iter"])
                assert _agrees(row["torchvision img/s"], tv.get("images_per_s"))
                ratio = ours["images_per_s"] / tv["images_per_s"] if tv else None
                assert _agrees(row["ours / tv"], ratio), (row["ours / tv"], ratio)
                prof = ours.get("profile", {})
                assert _agrees(row["GPU ms/iter"], prof.get("gpu_ms_per_iter"))
                assert _agrees(row["busy"], prof.get("busy"))
                dets = ours["detections_per_image"]
                assert _agrees(row["det/img"], sum(dets) / len(dets) if dets else None)
                assert _agrees(row["ours GiB"], ours.get("peak_mem_gib"))
                assert _agrees(row["tv GiB"], tv.get("peak_mem_gib"))
                assert (row["check"] == "ok") == r["ok"]
    if "train" in steps:
        t = steps["train"]
        (row,) = tables["fpn train with the real loader"]
        for column, key in [("iterations", "iterations"), ("s/iter", "s_per_iter"), ("images/s", "images_per_s"),
                            ("bench images/s", "bench_images_per_s")]:
            assert _agrees(row[column], t.get(key)), (column, row[column], t.get(key))
        assert row["finite"] == str(t.get("finite"))
        vs = t["images_per_s"] / t["bench_images_per_s"] if t.get("bench_images_per_s") else None
        assert _agrees(row["vs bench"], vs)


def test_markdown_report_shows_every_run_its_numbers_and_skips():
    res = {"config": {"precision": "bf16 (NVIDIA H100, compute capability 9.0)"},
           "ours/train_bs8": {"images_per_s": 210.0, "ms_per_iter": 38.1, "peak_mem_gib": 20.5,
                              "detections_per_image": [10, 20], "representative": True,
                              "host_syncs": {"per_iter": 1, "sites": {"fpn/engine/step.py:80": 1}},
                              "profile": {"gpu_ms_per_iter": 30.0, "busy": 0.8, "launches_per_iter": 900,
                                          "top_kernels": [{"name": "sm90_gemm", "ms_per_iter": 9.0}]}},
           "torchvision/train_bs8": {"images_per_s": 80.0, "peak_mem_gib": 30.0}, "ratio/train_bs8": 2.625}
    report = {"dry_run": False, "ok": False, "seconds": 400.0, "environment": {"gpu": "H100"}, "steps": {
        "tests": {"ok": True, "cmd": "pytest -m device", "summary": "10 passed"},
        "synthetic": {"ok": True, "wall_s": 55.0, "iterations": 1600, "first_loss": 3.5, "last_loss": 0.9,
                      "finite": True, "falling": True, "s_per_iter": 0.03, "map": 0.71},
        "bench": {"ok": False, "runs": {"r101 train bs8 bf16": {"ok": True, "results": res},
                                        "r101 infer bs8 bf16": gpu_check.skipped("out of time")}},
        "train": {"ok": True, "iterations": 150, "s_per_iter": 0.04, "images_per_s": 200.0,
                  "bench_images_per_s": 210.0, "vs_bench": 0.952, "finite": True},
    }}  # fmt: skip
    md = gpu_check.markdown(report)
    _check_markdown_shows_the_report(report, md)
    rows = _tables(md)["fpn bench, same weights, against torchvision"]
    assert [r["run"].split(":")[0] for r in rows] == ["r101 train bs8 bf16", "r101 infer bs8 bf16"]
    assert "`fpn/engine/step.py:80` x1" in md and "`sm90_gemm` 9.0 ms" in md  # the sync site and the top kernel
    # a table that showed another number, or the ratio the wrong way round, would not pass the check above
    for wrong in [md.replace("| 2.62 |", "| 0.38 |"), md.replace("| 0.71", "| 0.17"),
                  md.replace("| 200.0 |", "| 210.0 |")]:
        with pytest.raises(AssertionError):
            _check_markdown_shows_the_report(report, wrong)


def test_needs_cuda_unless_dry_and_checks_steps(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry-run", "--steps", "train,lint", "--out", str(tmp_path)])
    assert "--steps train,lint: choose from tests, triton, synthetic, bench, train, levers" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert gpu_check.main(["--out", str(tmp_path)]) == 2
        assert "no CUDA device visible; run with --dry-run" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_passes_on_a_cpu(tmp_path):
    """The script end to end on the CPU (about two minutes): the Triton probe (interpreted), same-weights bench
    runs (pretrained, saved, reloaded), the synthetic preset, the real-loader training on the saved backbone, a
    levers-off run. The device tests run elsewhere. What is kept is three small files; the bulk is in scratch."""
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    cmd = ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--steps",
           "triton,synthetic,bench,train,levers", "--out", str(out), "--scratch", str(scratch)]  # fmt: skip
    env = {**os.environ, "PYTHON": sys.executable}  # the tests' interpreter, whatever python3 is on PATH
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.startswith("gpu_check: plan, in order of value: ")  # the plan, up front
    # the kept folder: the reports and the details' archive, nothing bulky; weights and datasets in scratch
    assert sorted(p.name for p in out.iterdir()) == sorted(gpu_check.KEPT)
    assert sum(p.stat().st_size for p in out.iterdir()) < 2 * 2**20  # a dry run's; a GPU run's stays < 20 MB
    assert (scratch / "tv_r18.pth").is_file() and (scratch / "data" / "synthetic").is_dir()
    with tarfile.open(out / "details.tar.gz") as tar:
        names = tar.getnames()
    assert "details/logs/bench_train_bs2_fp32.log" in names and "details/bench_infer_bs2_auto.json" in names
    assert "details/metrics_real_loader.jsonl" in names and not any(n.endswith((".pth", ".jpg")) for n in names)
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and set(report["steps"]) == {"triton", "synthetic", "bench", "train", "levers"}
    assert [t["step"] for t in report["plan"]] == ["triton", "bench", "bench", "synthetic", "train", "levers"]
    assert all(t["result"] == "ok" and t["seconds"] > 0 for t in report["plan"])
    triton = report["steps"]["triton"]
    assert triton["mismatched_groups"] == 0 and triton["groups"] == 16 and triton["near_threshold_pairs"] > 100
    runs = report["steps"]["bench"]["runs"]
    assert set(runs) == set(gpu_check.DRY.bench_runs) and all(r["ok"] for r in runs.values())
    first = runs["train bs2 fp32"]["results"]
    assert first["weights"]["pretrain"]["iterations"] == 20 and first["ours/train_bs2"]["representative"]
    assert first["ours/train_bs2"]["aten_ops"]["ops"] > 0
    assert runs["infer bs2 auto"]["results"]["weights"]["kind"] == "torchvision state dict"
    assert runs["infer bs2 auto"]["results"]["agreement"]["ok"]
    plain = report["steps"]["levers"]["runs"]["train bs2 fp32 plain"]["results"]
    assert plain["config"]["fuse_frozen_bn"] is False and plain["weights"]["kind"] == "torchvision state dict"
    assert set(report["steps"]["levers"]["runs"]) == set(gpu_check.DRY.lever_runs)
    for name, step in report["steps"].items():  # each planned step and run ran (command, exit code) or says why not
        for r in step.get("runs", {name: step}).values():
            assert ("cmd" in r and r["rc"] is not None) or (r.get("skipped") and r.get("note")), (name, r)
    assert first["ratio/train_bs2"] == pytest.approx(
        first["ours/train_bs2"]["images_per_s"] / first["torchvision/train_bs2"]["images_per_s"])
    train = report["steps"]["train"]
    assert train["iterations"] == train["planned_iterations"] == gpu_check.DRY.train_iterations == 6
    assert train["images_per_s"] > 0 and train["bench_images_per_s"] == first["ours/train_bs2"]["images_per_s"]
    assert train["vs_bench"] == pytest.approx(train["images_per_s"] / train["bench_images_per_s"])
    assert report["seconds"] <= gpu_check.DRY.budget_s
    _check_markdown_shows_the_report(report, (out / "report.md").read_text())


def test_scratch_is_outside_the_repository_and_only_ours_is_emptied(tmp_path):
    with pytest.raises(SystemExit, match="inside the repository"):
        gpu_check.prepare_scratch(ROOT / "runs" / "bulk")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("someone's")
    with pytest.raises(SystemExit, match="not empty and not made by gpu_check"):
        gpu_check.prepare_scratch(foreign)
    ours = tmp_path / "ours"
    gpu_check.prepare_scratch(ours)
    (ours / "tv_r101.pth").write_bytes(b"stale weights of an earlier call")
    gpu_check.prepare_scratch(ours)
    assert sorted(p.name for p in ours.iterdir()) == [gpu_check.SCRATCH_MARK]


@pytest.mark.parametrize("plan", [gpu_check.FULL, gpu_check.DRY], ids=["full", "dry"])
def test_planned_steps_fit_the_budget(plan, tmp_path, monkeypatch, capsys):
    """The whole plan with every command running until its timeout (simulated time): the call still ends within
    the budget, every command that started had at least 15 s, and every planned step and run either ran or is
    reported skipped with the reason; the default budget plus start-up keeps to the 8 minutes promised."""
    now, started = [0.0], []

    def run(cmd, log, timeout, env=None):
        assert 15 <= timeout <= plan.budget_s - now[0]  # never past the budget
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("killed at the timeout\n")
        if "--save-weights" in cmd:  # the weights the later runs load, as if saved before the timeout
            torch.save({}, cmd[cmd.index("--save-weights") + 1])
        started.append((cmd, timeout))
        now[0] += timeout
        return {"cmd": " ".join(cmd), "rc": 124, "seconds": timeout, "timed_out": True, "log": str(log)}

    clock = type("Time", (), {"monotonic": lambda: now[0], "perf_counter": lambda: now[0]})
    monkeypatch.setattr(gpu_check, "time", clock)
    monkeypatch.setattr(gpu_check, "run", run)
    monkeypatch.setattr(gpu_check, "environment", lambda device: {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    argv = ["--out", str(tmp_path / "out"), "--scratch", str(tmp_path / "scratch"), "--steps", ",".join(gpu_check.STEPS)]
    argv += ["--dry-run"] if plan is gpu_check.DRY else []
    assert gpu_check.main(argv) == 1  # every command timed out
    assert started and now[0] <= plan.budget_s
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["steps"]) == set(gpu_check.STEPS) and report["seconds"] <= plan.budget_s
    for step, runs in [("bench", plan.bench_runs), ("levers", plan.lever_runs)]:
        assert set(report["steps"][step]["runs"]) == set(runs)
    for name, step in report["steps"].items():
        for r in step.get("runs", {name: step}).values():
            assert (r.get("timed_out") and r["seconds"] >= 15) or (r.get("skipped") and r.get("note")), (name, r)
    assert any(r.get("note") == "out of time" for r in report["steps"]["levers"]["runs"].values())
    if plan is gpu_check.FULL:
        assert plan.budget_s + 30 <= 8 * 60  # start-up (CUDA, imports) within the rest
    _check_markdown_shows_the_report(report, (tmp_path / "out" / "report.md").read_text())


@pytest.mark.parametrize("plan", [gpu_check.FULL, gpu_check.DRY], ids=["full", "dry"])
def test_planned_costs_add_up_within_the_budget_most_valuable_first(plan):
    """The default tasks' planned seconds fit the budget (the levers, asked for separately, may not); every task of
    the plan is one the steps define, once; tests first, then the Triton probe, then the same-weights R101 runs."""
    default = [t for t in plan.tasks if t.step in gpu_check.DEFAULT_STEPS]
    assert sum(t.planned_s for t in default) <= plan.budget_s
    assert all(15 <= t.planned_s <= t.timeout_s for t in plan.tasks)
    named = [(t.step, t.name) for t in plan.tasks]
    assert len(set(named)) == len(named)
    assert {n for s, n in named if s == "bench"} == set(plan.bench_runs)
    assert {n for s, n in named if s == "levers"} == set(plan.lever_runs)
    assert [s for s, _ in named[:3]] == ["tests", "triton", "bench"] and named[-1][0] == "levers"
    assert named.index(("train", "")) > named.index(("bench", plan.train_reference))  # its weights come first
    if plan is gpu_check.FULL:
        assert [n for _, n in named[2:4]] == ["r101 train bs8 bf16", "r101 infer bs8 bf16"]
        # the real loader: 600 images and their mirrors (data.flip) at batch 8, the bench's pooler and sizes
        assert plan.train_iterations == 150 and "model.pool_aligned=False" in plan.train_args
        assert "data.max_size=800" in plan.train_args and "solver.clip_grad_norm=10" in plan.train_args


def test_a_run_whose_weights_were_not_written_pretrains_them_and_the_rest_go_on(tmp_path, monkeypatch):
    """The first bench run fails before saving its weights: the next run that would load them pretrains and saves
    them itself (as many iterations), and the runs after it load them."""
    commands = []

    def run(cmd, log, timeout, env=None):
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("failed\n" if not commands else "ran\n")
        rc = 1 if not commands else 0
        if rc == 0 and "--save-weights" in cmd:
            torch.save({}, cmd[cmd.index("--save-weights") + 1])
        commands.append(cmd)
        return {"cmd": " ".join(cmd), "rc": rc, "seconds": 1.0, "timed_out": False, "log": str(log)}

    monkeypatch.setattr(gpu_check, "run", run)
    paths = gpu_check.Paths(tmp_path / "out", tmp_path / "scratch")
    plan = gpu_check.FULL
    results = [gpu_check.step_bench_run(plan, paths, 100, name) for name in
               ["r101 train bs8 bf16", "r101 infer bs8 bf16", "r101 train bs2 fp32"]]  # fmt: skip
    assert [r["rc"] for r in results] == [1, 0, 0] and not results[0]["ok"]
    second, third = commands[1], commands[2]
    assert second[second.index("--pretrain-iters") + 1] == "100" and "--save-weights" in second
    assert results[1]["note"] == "tv_r101.pth was not written before: pretrained here"
    assert "--weights" in third and "--save-weights" not in third


def test_a_bench_run_whose_fast_path_fell_back_fails():
    res = {"ours/train_bs8": {"representative": True}}
    log = "RuntimeWarning: fpn: the Triton NMS kernel cannot run here (CalledProcessError: cc); using torchvision's"
    assert gpu_check.bench_checks(res, log) == ["fell back: the Triton NMS kernel cannot run here"]
    assert gpu_check.bench_checks(res, "all good") == []


@pytest.mark.parametrize("plan", [gpu_check.FULL, gpu_check.DRY], ids=["full", "dry"])
def test_real_loader_run_follows_a_bench_run_that_saves_weights(plan):
    flags, weights = plan.bench_runs[plan.train_reference]
    bs = lambda args: args[args.index("--bs") + 1]  # noqa: E731
    assert weights.startswith("save:") and bs(flags) == bs(plan.train_args)  # the step rates compared: one batch


@pytest.mark.slow
@pytest.mark.parametrize("how", ["PYTHON set", "found on PATH"])
def test_the_shell_script_runs_the_tests_interpreter_not_the_first_python3(tmp_path, how):
    """A ``python3`` first on PATH that is not the interpreter running the tests (as when a virtualenv's python runs
    pytest without the virtualenv activated): gpu_check.sh runs ``$PYTHON`` when set, else the first python on PATH
    that has torch, and every step under it. The cheapest run that writes a report: the train step alone, skipped
    for want of the bench's weights."""
    bin_dir, ran = tmp_path / "bin", tmp_path / "fake_python3_ran"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f"#!/bin/sh\ntouch '{ran}'\nexit 1\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    if how == "PYTHON set":
        env["PYTHON"] = sys.executable
    else:  # a `python` after the broken python3: the test's interpreter (a wrapper keeps a virtualenv's sys.executable)
        (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    cmd = ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--steps", "train", "--out",
           str(tmp_path / "out"), "--scratch", str(tmp_path / "scratch")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert (tmp_path / "out" / "report.json").is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["environment"]["executable"] == sys.executable
    assert report["steps"]["train"] == gpu_check.skipped("tv_r18.pth was not written (run the bench step first)")
    assert proc.returncode == 1  # a skipped step fails the check
    assert ran.exists() == (how == "found on PATH")  # probed and passed over; with PYTHON set, never run


def test_triton_probe_says_when_the_toolchain_is_missing(monkeypatch):
    """No C compiler and no Python headers: the probe says so in one line, before compiling anything."""
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)
    monkeypatch.setattr(gpu_check.sysconfig, "get_paths", lambda: {"include": "/nonexistent/include"})
    result = gpu_check.triton_probe("cuda")
    assert not result["ok"] and result["toolchain"] == {"cc": None, "python_h": False}
    assert result["note"] == ("Triton cannot build its launcher: missing a C compiler (cc, gcc or clang; or $CC) and "
                              "Python's headers (/nonexistent/include/Python.h; the python3-dev package); the NMS "
                              "falls back to torchvision's (a host sync per call)")  # fmt: skip
