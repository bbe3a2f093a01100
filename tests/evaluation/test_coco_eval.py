"""COCO metrics: the same numbers as pycocotools' COCOeval, stage by stage; the results format; errors."""

import importlib.util
import json
import sys

import numpy as np
import pytest

from coco_cases import pycocotools_eval, random_case, write_case
from fpn.errors import DataWarning, UserError
from fpn.evaluation.coco_eval import (
    STAT_NAMES,
    evaluate_coco,
    load_gt,
    read_results,
    results_from_outputs,
    write_results,
)

pytest.importorskip("pycocotools")


def _engines():
    return ["pycocotools"] + (["faster-coco-eval"] if importlib.util.find_spec("faster_coco_eval") else [])


def _evaluate(gt_path, dets_path, engine):
    gt = load_gt(gt_path)
    return evaluate_coco(gt, read_results(dets_path, gt), engine=engine)


@pytest.mark.slow
@pytest.mark.parametrize("engine", _engines())
def test_same_numbers_as_pycocotools_on_random_cases(tmp_path, engine):
    worst = 0.0
    for seed in range(6):
        gt, dets = random_case(seed, n_images=int(10 + 8 * seed), n_cats=int(3 + 15 * seed))
        gt_path, dets_path = write_case(tmp_path / str(seed), gt, dets)
        ref = pycocotools_eval(gt_path, dets_path)
        ours = _evaluate(gt_path, dets_path, engine)
        # stage by stage: the accumulated precision / recall arrays, then the summary, then per class
        ref_precision = ref.eval["precision"]  # (T, R, K, A, M)
        ref_stats = np.asarray(ref.stats)
        for name, value, ref_value in zip(STAT_NAMES, (ours.stats[n] for n in STAT_NAMES), ref_stats):
            assert (value is None) == (ref_value == -1), (seed, name)
            if value is not None:
                assert abs(value - ref_value) <= 1e-9, (seed, name, value, ref_value)
                worst = max(worst, abs(value - ref_value))
        for k, cls in enumerate(ours.classes):
            p = ref_precision[:, :, k, 0, -1]
            if (p > -1).any():
                assert abs(ours.ap[cls] - p[p > -1].mean()) <= 1e-9, (seed, cls)
                assert np.abs(ours.curves[cls][1] - p.mean(axis=0)).max() <= 1e-9
            else:
                assert ours.ap[cls] is None and len(ours.curves[cls][0]) == 0
        assert ours.map == ours.stats["AP"] and ours.engine == engine
    assert worst <= 1e-9


def test_results_format_round_trip(tmp_path):
    import torch

    outputs = [
        {"boxes": torch.tensor([[10.0, 20.0, 30.5, 60.0], [0.0, 0.0, 5.0, 5.0]]),
         "scores": torch.tensor([0.9, 0.123456789]), "labels": torch.tensor([2, 1])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
    ]  # fmt: skip
    results = results_from_outputs(["a", "b"], outputs, {"a": 42, "b": 7}, category_ids=(5, 9))
    assert results == [
        {"image_id": 42, "category_id": 9, "bbox": [10.0, 20.0, 20.5, 40.0], "score": 0.9},
        {"image_id": 42, "category_id": 5, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.12346},
    ]
    path = write_results(tmp_path / "r.json", results)
    gt = {"images": [{"id": 42}, {"id": 7}], "categories": [{"id": 5}, {"id": 9}]}
    assert read_results(path, gt) == results
    assert write_results(tmp_path / "e.json", []).read_text() == "[]\n" and read_results(tmp_path / "e.json", gt) == []


def test_no_detections_score_zero_where_there_is_ground_truth(tmp_path):
    gt, _ = random_case(3, n_images=8, n_cats=5)
    gt_path, dets_path = write_case(tmp_path, gt, [])
    result = _evaluate(gt_path, dets_path, "auto")
    assert result.stats["AP"] == 0.0 and result.stats["AR100"] == 0.0
    assert {c for c, ap in result.ap.items() if ap is None} == {f"c{c['id']}" for c in gt["categories"][-3:]}
    assert all(ap == 0.0 for ap in result.ap.values() if ap is not None)


def test_detections_of_unknown_categories_are_left_out_with_a_warning(tmp_path):
    gt, dets = random_case(1, n_images=10, n_cats=6)
    dets += [{**d, "category_id": 10_000} for d in dets[:7]]
    gt_path, dets_path = write_case(tmp_path, gt, dets)
    with pytest.warns(DataWarning, match="7 detections have category ids that are not in the ground truth"):
        ours = _evaluate(gt_path, dets_path, "auto")
    ref = pycocotools_eval(gt_path, dets_path).stats
    assert np.abs(np.asarray([ours.stats[n] for n in STAT_NAMES]) - ref).max() < 1e-9


@pytest.mark.parametrize("dets, words", [
    ({"a": 1}, "COCO results are a JSON list of detections, not a dict"),
    ([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 0.5}], "detection 0 has no bbox"),
    ([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": None}], "detection 0 has no finite score"),
    ([{"image_id": 99, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 1}], "detection 0 has image_id 99, which"),
    ([{"image_id": 1, "category_id": "cat", "bbox": [1, 2, 3, 4], "score": 1}], "has no integer category_id"),
])  # fmt: skip
def test_malformed_results_are_one_line_errors(tmp_path, dets, words):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(dets))
    with pytest.raises(UserError, match=f"^{path}: .*{words}".replace("[", r"\[").replace("(", r"\(")):
        read_results(path, {"images": [{"id": 1}], "categories": [{"id": 1}]})


def test_load_gt_completes_what_cocoeval_needs(tmp_path):
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9}],
            "categories": [{"id": 1, "name": "a"}],
            "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 3]}]}
    (tmp_path / "gt.json").write_text(json.dumps(data))
    (ann,) = load_gt(tmp_path / "gt.json")["annotations"]
    assert (ann["id"], ann["area"], ann["iscrowd"]) == (1, 6.0, 0)
    data["annotations"] = [{**data["annotations"][0], "id": 5}] * 2
    (tmp_path / "gt.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="annotation id 5 is used twice"):
        load_gt(tmp_path / "gt.json")


def test_a_missing_evaluator_says_how_to_install_it(monkeypatch):
    for name in ("faster_coco_eval", "pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    message = r"COCO metrics need faster-coco-eval or pycocotools: pip install faster-coco-eval"
    with pytest.raises(UserError, match=message):
        evaluate_coco({"images": [], "annotations": [], "categories": []}, [])


def test_ground_truth_needs_only_what_box_evaluation_reads(tmp_path):
    # no file names, sizes or category names, a name used twice: pycocotools scores such a file, so do we
    gt, dets = random_case(5, n_images=12, n_cats=6)
    for image in gt["images"]:
        del image["file_name"], image["width"], image["height"]
    del gt["categories"][0]["name"]
    gt["categories"][2]["name"] = gt["categories"][1]["name"]
    gt_path, dets_path = write_case(tmp_path, gt, dets)
    ours = _evaluate(gt_path, dets_path, "auto")
    ref = pycocotools_eval(gt_path, dets_path).stats
    assert np.abs(np.asarray([-1 if ours.stats[n] is None else ours.stats[n] for n in STAT_NAMES]) - ref).max() < 1e-9
    c = gt["categories"]
    assert ours.classes[:3] == (str(c[0]["id"]), f"{c[1]['name']} ({c[1]['id']})", f"{c[2]['name']} ({c[2]['id']})")
    gt["annotations"][0]["image_id"] = 10_000
    write_case(tmp_path, gt, dets)
    with pytest.raises(UserError, match="annotation 1 has image_id 10000, which is not in 'images'"):
        load_gt(gt_path)
