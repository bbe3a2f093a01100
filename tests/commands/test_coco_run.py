"""A COCO-JSON dataset trained and evaluated with one command, then tested and scored again: the synthetic
dataset written as COCO JSON (difficult objects as crowd regions), a tiny res18, COCO metrics."""

import json

import pytest

from fpn.cli import main
from fpn.data.synthetic import SYNTH_CLASSES, generate
from tiny_run import TINY

pytestmark = pytest.mark.slow  # a training and two evaluations

pytest.importorskip("faster_coco_eval")


def test_train_and_evaluate_a_coco_json_folder_then_test_and_coco_eval_agree(tmp_path, capsys):
    data = generate(tmp_path / "shapes", seed=0, n_train=8, n_test=4, formats=("coco",))
    assert main(["train", "--dataset", str(data), "--preset", "synthetic", "--save-dir", str(tmp_path / "runs"),
                 "--bs", "2", "--workers", "0", "--epochs", "1", "--no-progress", "--set", *TINY]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"dataset {data}: COCO JSON, layout annotations/instances_<split>.json: train " in out
    lines = out.rstrip().splitlines()
    assert lines[-1].startswith("mAP = ") and "COCO AP@[.50:.95]" in lines[-1]
    assert lines[-13].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = ")
    run = tmp_path / "runs" / "res18" / "shapes" / "default"
    evaluated = json.loads((run / "eval_test.json").read_text())
    assert evaluated["metric"] == "coco" and set(evaluated["ap"]) == set(SYNTH_CLASSES)
    assert set(evaluated["stats"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
                                       "ARm", "ARl"}  # fmt: skip
    results = json.loads((run / "results_test" / "coco_results.json").read_text())
    assert results and {r["category_id"] for r in results} <= set(range(1, 9))
    assert {r["image_id"] for r in results} <= {9, 10, 11, 12}  # the test images' own ids

    # fpn test with the training's batch size and precision prints the same numbers; coco-eval scores its file
    ckpt = run / "fpn_1_1_3.pth"
    flags = ["--bs", "2", "--json", str(tmp_path / "t.json"), "--no-progress"]
    assert main(["test", "--checkpoint", str(ckpt), *flags]) == 0
    assert json.loads((tmp_path / "t.json").read_text()) == evaluated
    results_file = run / "test_shapes" / "results" / "coco_results.json"
    gt = data / "annotations" / "instances_test.json"
    assert main(["coco-eval", "--gt", str(gt), "--results", str(results_file), "--json", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text()) == evaluated
    # the VOC metric on the same COCO dataset
    assert main(["test", "--checkpoint", str(ckpt), "--metric", "voc07", "--no-progress"]) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("mAP = ") and (
        run / "test_shapes" / "results" / "comp4_det_test_circle.txt").is_file()  # fmt: skip
