"""VOC result files: writing, reading back, bad lines, and model outputs -> detections."""

import numpy as np
import pytest
import torch

from fpn.errors import UserError
from fpn.evaluation.results import detections_from_outputs, read_result_files, result_file, write_result_files

CLASSES = ("cat", "dog", "bird")
DETS = {
    "cat": [("000001", 0.951, 1.0, 1.0, 10.0, 10.0), ("000002", 0.5, 5.5, 3.0, 24.5, 30.0)],
    "dog": [("000002", 0.125, 10.0, 20.0, 30.0, 40.0)],
    "bird": [],
}


def test_write_then_read_round_trip(tmp_path):
    paths = write_result_files(tmp_path / "res", "test", DETS, CLASSES)
    assert [p.name for p in paths] == [f"comp4_det_test_{c}.txt" for c in CLASSES]
    # the devkit's format: score with 3 decimals, boxes with 1; an empty file for a class without detections
    assert paths[0].read_text() == "000001 0.951 1.0 1.0 10.0 10.0\n000002 0.500 5.5 3.0 24.5 30.0\n"
    assert paths[2].read_text() == ""
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == sorted(p.name for p in paths)  # no temp files
    assert read_result_files(tmp_path / "res", "test", CLASSES, image_ids=["000001", "000002"]) == DETS


def test_write_rounds_like_the_devkit(tmp_path):
    write_result_files(tmp_path, "val", {"cat": [("a", 0.12345, 1.04, 2.06, 3, 4)]}, ("cat",))
    assert result_file(tmp_path, "val", "cat").read_text() == "a 0.123 1.0 2.1 3.0 4.0\n"
    with pytest.raises(ValueError, match="unknown classes"):
        write_result_files(tmp_path, "val", {"cow": []}, ("cat",))


def test_missing_file_means_no_detections(tmp_path):
    write_result_files(tmp_path, "test", DETS, CLASSES)
    result_file(tmp_path, "test", "dog").unlink()
    got = read_result_files(tmp_path, "test", CLASSES)
    assert got["dog"] == [] and got["cat"] == DETS["cat"]


def test_no_result_file_at_all_names_the_directory(tmp_path):
    write_result_files(tmp_path, "val", DETS, CLASSES)  # another split's files do not count
    with pytest.raises(UserError, match=rf"^{tmp_path}: no result file comp4_det_test_"):
        read_result_files(tmp_path, "test", CLASSES)
    with pytest.raises(UserError, match="results directory not found"):
        read_result_files(tmp_path / "nope", "test", CLASSES)


@pytest.mark.parametrize(
    "line, message",
    [
        ("000001 0.9 1 2 3", "expected 6 fields 'image_id score x1 y1 x2 y2', got 5"),
        ("000001 0.9 1 2 3 4 5", "expected 6 fields 'image_id score x1 y1 x2 y2', got 7"),
        ("000001 high 1 2 3 4", "score is not a number: 'high'"),
        ("000001 0.9 1 2 x 4", "x2 is not a number: 'x'"),
        ("000001 nan 1 2 3 4", "score is not finite: 'nan'"),
        ("999999 0.9 1 2 3 4", "image '999999' is not in the evaluated image set"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, line, message):
    path = result_file(tmp_path, "test", "dog")
    path.write_text("000001 0.5 1 1 5 5\n\n" + line + "\n")  # the blank line 2 is skipped, the bad one is 3
    with pytest.raises(UserError) as e:
        read_result_files(tmp_path, "test", CLASSES, image_ids=["000001", "000002"])
    assert str(e.value) == f"{path}:3: {message}"


def test_unknown_image_accepted_without_image_set(tmp_path):
    result_file(tmp_path, "test", "cat").write_text("xyz 0.5 1 1 5 5\n")
    assert read_result_files(tmp_path, "test", CLASSES)["cat"] == [("xyz", 0.5, 1.0, 1.0, 5.0, 5.0)]


def test_detections_from_outputs_tensors_and_arrays():
    outputs = [
        {  # continuous boxes -> VOC: (x1 + 1, y1 + 1, x2, y2)
            "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [4.5, 2.0, 20.0, 30.0]]),
            "scores": torch.tensor([0.75, 0.25]),
            "labels": torch.tensor([2, 1]),
        },
        {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)},
        {"boxes": np.array([[1.0, 2.0, 3.0, 4.0]]), "scores": np.array([0.5]), "labels": np.array([2])},
    ]
    dets = detections_from_outputs(["a", "b", "c"], outputs, CLASSES)
    assert dets == {
        "cat": [("a", 0.25, 5.5, 3.0, 20.0, 30.0)],
        "dog": [("a", 0.75, 1.0, 1.0, 10.0, 10.0), ("c", 0.5, 2.0, 3.0, 3.0, 4.0)],
        "bird": [],
    }
    assert all(type(v) is float for v in dets["cat"][0][1:])


def test_detections_from_outputs_rejects_bad_input():
    one = {"boxes": np.zeros((1, 4)), "scores": np.ones(1), "labels": np.array([0])}
    with pytest.raises(ValueError, match="labels must lie in 1..3"):
        detections_from_outputs(["a"], [one], CLASSES)
    with pytest.raises(ValueError, match="1 image ids but 2 outputs"):
        detections_from_outputs(["a"], [one, one], CLASSES)
    with pytest.raises(ValueError, match="differ in length"):
        detections_from_outputs(["a"], [dict(one, scores=np.ones(2))], CLASSES)
