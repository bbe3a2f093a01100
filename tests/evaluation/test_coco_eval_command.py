"""`fpn coco-eval` end to end: the numbers of pycocotools, its summary lines, JSON and plot; one-line errors."""

import json

import numpy as np
import pytest

from coco_cases import pycocotools_eval, random_case, write_case
from fpn.cli import main

pytest.importorskip("pycocotools")


def test_scores_a_results_file_like_pycocotools(tmp_path, capsys):
    gt_path, dets_path = write_case(tmp_path, *random_case(11, n_images=25, n_cats=12))
    out, plot = tmp_path / "out.json", tmp_path / "pr.png"
    assert main(["coco-eval", "--gt", str(gt_path), "--results", str(dets_path), "--json", str(out),
                 "--plot", str(plot)]) == 0  # fmt: skip
    lines = capsys.readouterr().out.rstrip().splitlines()
    ref = pycocotools_eval(gt_path, dets_path)
    assert lines[-1] == f"mAP = {ref.stats[0]:.4f} (COCO AP@[.50:.95], 9 classes; without ground truth, excluded: " + \
        ", ".join(f"c{c['id']}" for c in json.loads(gt_path.read_text())["categories"][-3:]) + ")"
    assert lines[-13] == f" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = {ref.stats[0]:.3f}"
    assert lines[-2] == f" Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = {ref.stats[11]:.3f}"
    report = json.loads(out.read_text())
    assert report["metric"] == "coco" and report["map"] == report["stats"]["AP"]
    stats = np.array([-1 if v is None else v for v in report["stats"].values()])
    assert np.abs(stats - ref.stats).max() < 1e-9
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_user_errors_are_one_line(tmp_path, capsys):
    gt_path, dets_path = write_case(tmp_path, *random_case(2, n_images=4, n_cats=4))
    (tmp_path / "bad.json").write_text("[{]")
    cases = [
        (["--gt", str(tmp_path / "none.json"), "--results", str(dets_path)], "none.json: COCO annotation file not"),
        (["--gt", str(gt_path), "--results", str(tmp_path / "none.json")], "none.json: results file not found"),
        (["--gt", str(gt_path), "--results", str(tmp_path / "bad.json")], "bad.json: malformed JSON"),
        (["--gt", str(tmp_path / "bad.json"), "--results", str(dets_path)], "bad.json: malformed JSON"),
    ]
    for flags, message in cases:
        assert main(["coco-eval", *flags]) == 2, flags
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (flags, err)


def test_data_warnings_are_one_line(tmp_path, capsys):
    gt, dets = random_case(4, n_images=5, n_cats=5)
    gt_path, dets_path = write_case(tmp_path, gt, dets + [{**dets[0], "category_id": 999}])
    assert main(["coco-eval", "--gt", str(gt_path), "--results", str(dets_path)]) == 0
    err = capsys.readouterr().err
    assert err == (f"warning: {dets_path}: 1 detections have category ids that are not in the ground truth "
                   "(e.g. 999); left out, as COCOeval ignores them\n")
