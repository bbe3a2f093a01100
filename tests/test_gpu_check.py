"""scripts/gpu_check.py's own pieces (the whole script runs with --dry-run in a few minutes: not here)."""

import importlib.util
import json
import sys
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


def test_markdown_report_lists_every_run_and_skip():
    bench = {"config": {"precision": "bf16 (NVIDIA H100, compute capability 9.0)"},
             "ours/train_bs8": {"images_per_s": 210.0, "peak_mem_gib": 20.5},
             "torchvision/train_bs8": {"images_per_s": 80.0, "peak_mem_gib": 30.0}, "ratio/train_bs8": 2.625}
    report = {"dry_run": False, "ok": False, "seconds": 400.0, "environment": {"gpu": "H100"}, "steps": {
        "tests": {"ok": True, "cmd": "pytest -m device", "summary": "10 passed"},
        "train": {"ok": False, "runs": {
            "fp32": {"ok": True, "precision": "precision: fp32 (asked for)", "iterations": 300, "first_loss": 3.5,
                     "last_loss": 0.9, "finite": True, "falling": True, "s_per_iter": 0.05, "map": 0.61, "seconds": 40},
            "bf16": {"ok": True, "skipped": True, "note": "error: --amp bf16: no native bf16"}}},
        "bench": {"ok": True, "runs": {"train bs8 bf16": {"ok": True, "results": bench}}},
    }}  # fmt: skip
    md = gpu_check.markdown(report)
    assert md.startswith("# GPU acceptance check: FAILED") and "10 passed (ok)" in md
    assert "| fp32 | fp32 (asked for) | 300 | 3.5 | 0.9 | True | True | 0.05 | 0.6100 | 40 | ok |" in md
    assert "| bf16 | skipped: error: --amp bf16: no native bf16 |  |  |" in md
    assert "| train_bs8, bf16 | 210.00 | 80.00 | 2.62 | 20.50 | 30.00 |" in md


def test_needs_cuda_unless_dry_and_checks_steps(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry-run", "--steps", "train,lint", "--out", str(tmp_path)])
    assert "--steps train,lint: choose from tests, train, bench" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert gpu_check.main(["--out", str(tmp_path)]) == 2
        assert "no CUDA device visible; run with --dry-run" in capsys.readouterr().err
