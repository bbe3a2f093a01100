"""YOLO txt datasets: data.yaml's subset of YAML, label lines (bad ones counted, never a crash), both layouts
(Ultralytics images/<split>, Roboflow <split>/images) detected, records cached."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpn.data.catalog import resolve_dataset
from fpn.data.records import load_records
from fpn.data.yolo import (
    YoloProblems,
    class_names,
    labels_folder,
    parse_data_yaml,
    parse_yolo_lines,
    yolo_line,
)
from fpn.errors import DataWarning, UserError

ULTRALYTICS_YAML = """\
# Ultralytics-style
path: {path}  # dataset root dir
train: images/train  # train images (relative to 'path')
val: images/val
test:  # optional

# Classes
names:
  0: cat
  1: 'dog'
"""

ROBOFLOW_YAML = """\
train: ../train/images
val: ../valid/images
test: ../test/images

nc: 2
names: ['cat', "dog"]

roboflow:
  workspace: someone
  project: pets
  version: 3
  license: CC BY 4.0
  url: https://universe.roboflow.com/someone/pets/dataset/3
"""


def _image(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 120, 200)).save(path, quality=95)


def _labels(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --- data.yaml --------------------------------------------------------------------------------------------------


def test_data_yaml_forms():
    u = parse_data_yaml(ULTRALYTICS_YAML.format(path="../datasets/pets"), "u.yaml")
    assert u == {"path": "../datasets/pets", "train": "images/train", "val": "images/val", "test": None,
                 "names": {0: "cat", 1: "dog"}}  # fmt: skip
    r = parse_data_yaml(ROBOFLOW_YAML, "r.yaml")
    assert r["names"] == ["cat", "dog"] and r["nc"] == 2 and r["val"] == "../valid/images"
    assert class_names(u, "u.yaml") == class_names(r, "r.yaml") == ("cat", "dog")
    # a block list, a flow mapping, a flow list over several lines, a '#' inside quotes
    assert parse_data_yaml("names:\n- a\n- 'b # c'\n", "x")["names"] == ["a", "b # c"]
    assert parse_data_yaml("names: {0: a, 1: b}\n", "x")["names"] == {0: "a", 1: "b"}
    assert parse_data_yaml("names: [a,\n  b,  # two\n  c]\nnc: 3\n", "x") == {"names": ["a", "b", "c"], "nc": 3}
    # Ultralytics' own files end with a download script; nested blocks
    text = "names:\n  0: person\ndownload: |\n  from x import y\n\n  y('a: b')\nextra:\n  deep:\n    deeper: 1\n"
    parsed = parse_data_yaml(text, "x")  # (deeper blocks are not read: fpn needs none)
    assert parsed["names"] == {0: "person"} and parsed["download"] == "from x import y\n\ny('a: b')"
    assert set(parsed) == {"names", "download", "extra"}


@pytest.mark.parametrize(("text", "message"), [
    ("names: [a, b\n", "x.yaml:1: 'names' opens [ but never closes it"),
    ("  names: [a]\n", "x.yaml:1: unexpected indentation"),
    ("just words\n", "x.yaml:1: expected 'key: value', got 'just words'"),
    ("names: ['a]\n", "x.yaml:1: unterminated quoted string"),
])  # fmt: skip
def test_data_yaml_errors_name_the_line(text, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_data_yaml(text, "x.yaml")


@pytest.mark.parametrize(("data", "message"), [
    ({"names": {0: "a", 2: "b"}}, "'names' must map the class ids 0..1, got ids [0, 2]"),
    ({"names": ["a", "A"]}, "class name 'A' is listed twice"),
    ({"names": ["a", "b"], "nc": 3}, "nc is 3 but 'names' lists 2 classes"),
    ({"names": "a"}, "'names' must list the class names"),
    ({"nc": 2}, "'names' must list the class names"),
])  # fmt: skip
def test_class_names_errors(data, message):
    with pytest.raises(UserError, match=re.escape(message)):
        class_names(data, "d.yaml")


# --- label lines ------------------------------------------------------------------------------------------------


def test_label_lines_to_pixel_boxes_and_back():
    text = "0 0.5 0.5 0.5 0.25\n\n1 0.25 0.75 0.1 0.2 0.875\n1 0.1 0.1 0.3 0.1 0.3 0.4 0.1 0.4\n"
    problems = YoloProblems()
    boxes, labels, scores = parse_yolo_lines(text, 200, 100, 2, "a.txt", problems)
    # 200x100 image: continuous pixel xyxy, the convention of VOC records (xmin=1..xmax=x2 in the XML)
    np.testing.assert_allclose(boxes, [[50, 37.5, 150, 62.5], [40, 65, 60, 85], [20, 10, 60, 40]], atol=1e-4)
    assert labels.tolist() == [1, 2, 2] and problems.total == 3 and problems.message("x") is None
    assert scores[1] == np.float32(0.875) and np.isnan(scores[[0, 2]]).all()
    # written back: the same lines (6 decimals), the polygon as its box
    assert yolo_line(boxes[0], 1, 200, 100) == "0 0.500000 0.500000 0.500000 0.250000"
    assert yolo_line(boxes[1], 2, 200, 100, 0.875) == "1 0.250000 0.750000 0.100000 0.200000 0.87500"
    assert yolo_line(boxes[2], 2, 200, 100) == "1 0.200000 0.250000 0.200000 0.300000"


def test_bad_label_lines_are_counted_not_fatal():
    lines = [
        "0 0.5 0.5 0.2 0.2",  # 1 fine
        "0 0.5 0.5 0.2",  # 2 malformed: 4 numbers
        "cat 0.5 0.5 0.2 0.2",  # 3 malformed: class not a number
        "0.5 0.5 0.5 0.2 0.2",  # 4 malformed: class not an integer
        "2 0.5 0.5 0.2 0.2",  # 5 unknown class (2 classes)
        "-1 0.5 0.5 0.2 0.2",  # 6 unknown class
        "1 0.5 0.5 0 0.2",  # 7 dropped: zero width
        "1 1.5 0.5 0.2 0.2",  # 8 dropped: wholly outside
        "1 0.5 0.5 nan 0.2",  # 9 dropped: not finite
        "1 0.95 0.5 0.2 0.2",  # 10 clipped: reaches 5 px past the right edge of 100 px
        "1 0.5 0.5 1.000001 0.2",  # 11 clipped silently: 0.00005 px over (rounding)
    ]
    problems = YoloProblems()
    boxes, labels, _ = parse_yolo_lines("\n".join(lines), 100, 100, 2, "img.txt", problems)
    assert labels.tolist() == [1, 2, 2]
    np.testing.assert_allclose(boxes[1], [85, 40, 100, 60], atol=1e-4)
    np.testing.assert_allclose(boxes[2], [0, 40, 100, 60], atol=1e-4)
    assert problems.total == 11
    assert problems.counts == {"malformed": 3, "unknown class": 2, "dropped": 3, "clipped": 1, "unreadable image": 0}
    assert problems.message("labels/train") == (
        "labels/train: skipped 3 malformed lines (not 'class cx cy w h' numbers) (img.txt:2, img.txt:3, img.txt:4); "
        "skipped 2 lines with a class id outside the names (img.txt:5 (class 2), img.txt:6 (class -1)); "
        "dropped 3 of 11 boxes (no positive width and height, or not inside the image) (img.txt:7, img.txt:8, "
        "img.txt:9); clipped 1 boxes reaching more than 1 px outside the image (img.txt:10)"
    )


def test_labels_folder_replaces_the_last_images_component():
    assert labels_folder(Path("/d/images/train")) == Path("/d/labels/train")
    assert labels_folder(Path("/images/d/train/images")) == Path("/images/d/train/labels")
    assert labels_folder(Path("/d/pics")) == Path("/d/pics")


# --- whole datasets ---------------------------------------------------------------------------------------------


def _ultralytics(root: Path, yaml_text: str | None = ULTRALYTICS_YAML) -> Path:
    _image(root / "images/train/a.jpg", 200, 100)
    _image(root / "images/train/sub/b.png", 50, 80)
    _image(root / "images/train/c.jpg", 60, 60)  # no label file: a background image
    _labels(root / "labels/train/a.txt", "0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.1 0.1\n")
    _labels(root / "labels/train/sub/b.txt", "1 0.5 0.5 1 1\n")
    _image(root / "images/val/d.jpg", 100, 100)
    _labels(root / "labels/val/d.txt", "0 0.5 0.5 0.2 0.2\n")
    if yaml_text is not None:
        (root / "data.yaml").write_text(yaml_text.format(path=root))
    return root


def test_ultralytics_layout_detected_and_read(tmp_path):
    root = _ultralytics(tmp_path / "pets")
    spec = resolve_dataset(str(root))
    assert spec.layout == ("YOLO txt (Ultralytics layout, classes from data.yaml): train images/train/ (labels "
                           "labels/train/), test images/val/ (labels labels/val/)")  # fmt: skip
    assert spec.classes == ("cat", "dog") and spec.metric == "voc07" and spec.category_ids == ()
    train = load_records(spec.train_sets, spec.classes)
    assert [r["id"] for r in train] == ["a", "c", "sub/b"]
    assert [(r["width"], r["height"]) for r in train] == [(200, 100), (60, 60), (50, 80)]
    assert train[0]["image"] == str(root / "images/train/a.jpg")
    np.testing.assert_allclose(train[0]["boxes"], [[50, 25, 150, 75], [40, 20, 60, 30]], atol=1e-4)
    assert train[0]["labels"].tolist() == [1, 2] and train[1]["labels"].tolist() == []
    np.testing.assert_allclose(train[2]["boxes"], [[0, 0, 50, 80]])
    assert not train[0]["difficult"].any() and train[1]["boxes"].shape == (0, 4)
    assert [r["id"] for r in load_records(spec.test_sets, spec.classes)] == ["d"]


def test_roboflow_layout_with_test_split_and_moved_path(tmp_path):
    root = tmp_path / "rf"
    for split, n in (("train", 2), ("valid", 1), ("test", 1)):
        for i in range(n):
            _image(root / split / "images" / f"{split}{i}_jpg.rf.0a1b.jpg", 64, 48)
            _labels(root / split / "labels" / f"{split}{i}_jpg.rf.0a1b.txt", "1 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text(ROBOFLOW_YAML)
    spec = resolve_dataset(str(root))
    assert spec.layout == ("YOLO txt (Roboflow layout, classes from data.yaml): train train/images/ (labels "
                           "train/labels/), test test/images/ (labels test/labels/)")  # fmt: skip
    (test,) = spec.test_sets
    assert test.split == "test"
    records = load_records(spec.train_sets, spec.classes)
    assert [r["id"] for r in records] == ["train0_jpg.rf.0a1b", "train1_jpg.rf.0a1b"]
    np.testing.assert_allclose(records[0]["boxes"], [[16, 12, 48, 36]])
    # without data.yaml the folders alone are enough once classes.txt names the classes (labelImg's export)
    (root / "data.yaml").unlink()
    (root / "classes.txt").write_text("cat\ndog\n")
    assert resolve_dataset(str(root)).layout.startswith("YOLO txt (Roboflow layout, classes from classes.txt)")
    # Ultralytics: a 'path' that no longer exists (the dataset was moved) falls back to the folder, said
    moved = _ultralytics(tmp_path / "moved", ULTRALYTICS_YAML.replace("{path}", "/nowhere/pets"))
    assert resolve_dataset(str(moved)).layout.endswith(
        f" (data.yaml's path /nowhere/pets not found; paths taken relative to {moved})")


def test_layout_errors(tmp_path):
    root = _ultralytics(tmp_path / "p", None)
    with pytest.raises(UserError, match=re.escape(f"{root / 'data.yaml'}: a YOLO dataset needs the class names")):
        resolve_dataset(str(root))
    (root / "data.yaml").write_text("names: [a]\ntrain: images/nope\n")
    with pytest.raises(UserError, match=re.escape(f"data.yaml: 'train: images/nope': folder {root}/images/nope")):
        resolve_dataset(str(root))
    (root / "data.yaml").write_text("names: [a]\ntrain: train.txt\n")
    (root / "train.txt").write_text("images/train/a.jpg\n")
    with pytest.raises(UserError, match="'train: train.txt' is a list file"):
        resolve_dataset(str(root))


def test_bad_labels_warn_once_per_split_and_records_are_cached(tmp_path):
    root = _ultralytics(tmp_path / "pets")
    _labels(root / "labels/train/c.txt", "0 0.5 0.5 0.5\n5 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.5 0.5\n")
    (root / "images/train/broken.jpg").write_bytes(b"not a jpeg")
    spec = resolve_dataset(str(root))
    for _ in range(2):  # parsed, then from the cache: the same records and the same warning
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            records = load_records(spec.train_sets, spec.classes)
        (w,) = caught
        assert w.category is DataWarning and str(w.message) == (
            f"{root / 'labels/train'}: skipped 1 malformed lines (not 'class cx cy w h' numbers) (c.txt:1); "
            "skipped 1 lines with a class id outside the names (c.txt:2 (class 5)); left out 1 images whose header "
            "does not read (broken.jpg)")  # fmt: skip
        assert [r["id"] for r in records] == ["a", "c", "sub/b"] and records[1]["labels"].tolist() == [1]
    assert len(list((root / "labels" / "annotations_cache").glob("yolo_train_*.pkl"))) == 1  # beside labels/train
    # a changed label file, a removed image: read again
    _labels(root / "labels/train/c.txt", "1 0.5 0.5 0.5 0.5\n")
    (root / "images/train/broken.jpg").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_records(spec.train_sets, spec.classes)[1]["labels"].tolist() == [2]


def test_voc_folder_is_not_taken_for_yolo(voc_folder):
    (voc_folder / "labels").mkdir()
    assert resolve_dataset(str(voc_folder)).layout.startswith("VOC layout")


def test_pixel_grid_boxes_come_back_exact_others_within_rounding():
    # 6 decimals of 1/644 etc. are not exact; a coordinate within 1e-6 of the side of a whole pixel is that pixel
    grid = [[0, 5, 12, 266], [239, 246, 251, 261], [1, 1, 321, 265]]
    text = "".join(yolo_line(b, 1, 322, 266) + "\n" for b in grid)
    boxes, _, _ = parse_yolo_lines(text, 322, 266, 1)
    np.testing.assert_array_equal(boxes, np.asarray(grid, np.float32))
    off = [10.37, 20.5, 100.25, 200.75]  # sub-pixel boxes (CVAT, a model's predictions) stay sub-pixel
    boxes, _, _ = parse_yolo_lines(yolo_line(off, 1, 322, 266), 322, 266, 1)
    assert np.abs(boxes[0] - off).max() < 1e-3 and boxes[0][0] != 10
