"""Reports: AP table, JSON summary, PR-curve plot."""

import json
import math

import numpy as np
import pytest

from fpn.evaluation.report import format_table, plot_pr_curves, write_json
from fpn.evaluation.voc_eval import EvalResult


def make_result():
    return EvalResult(
        metric="voc07",
        ap={"aeroplane": 0.75, "cow": 0.0, "tvmonitor": None},
        map=0.375,
        curves={
            "aeroplane": (np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])),
            "cow": (np.zeros(0), np.zeros(0)),
            "tvmonitor": (np.zeros(0), np.zeros(0)),
        },
        classes=("aeroplane", "cow", "tvmonitor"),
        npos={"aeroplane": 2, "cow": 3, "tvmonitor": 0},
        num_detections={"aeroplane": 3, "cow": 0, "tvmonitor": 12},
    )


def test_format_table():
    """One row per class with its AP ("n/a" when undefined), ground-truth and detection counts, the columns aligned
    under a rule, then the mAP line."""
    r = make_result()
    header, *rows, rule, last = format_table(r).split("\n")
    assert header.split() == ["class", "AP", "GT", "dets"] and set(rule) == {"-"}
    assert {len(line) for line in [header, *rows]} == {len(rule)}  # aligned: every column right-justified
    assert [row.split()[0] for row in rows] == list(r.classes)
    for row in rows:
        cls, ap, gt, dets = row.split()
        assert (None if ap == "n/a" else pytest.approx(float(ap), abs=5e-5)) == r.ap[cls]
        assert (int(gt), int(dets)) == (r.npos[cls], r.num_detections[cls])
    assert last == "mAP = 0.3750 (voc07 11-point, 2 classes; without ground truth, excluded: tvmonitor)"


def test_format_table_all_defined_and_none_defined():
    r = make_result()
    r.ap["tvmonitor"], r.metric = 0.125, "area"
    assert format_table(r).split("\n")[-1] == "mAP = 0.3750 (area, 3 classes)"
    r.ap, r.map = {"cow": None}, float("nan")
    assert format_table(r).split("\n")[-1] == "mAP = n/a (area, 0 classes; without ground truth, excluded: cow)"


def test_write_json(tmp_path):
    path = tmp_path / "out" / "eval.json"
    write_json(make_result(), path)
    assert json.loads(path.read_text()) == {
        "metric": "voc07",
        "ap": {"aeroplane": 0.75, "cow": 0.0, "tvmonitor": None},
        "map": 0.375,
    }
    r = make_result()
    r.map = math.nan
    write_json(r, path)
    assert json.loads(path.read_text())["map"] is None  # strict JSON: no NaN literal
    assert sorted(p.name for p in path.parent.iterdir()) == ["eval.json"]


def test_plot_pr_curves(tmp_path):
    path = tmp_path / "pr.png"
    plot_pr_curves(make_result(), path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    from PIL import Image

    with Image.open(path) as im:
        assert im.size == (900, 600)
