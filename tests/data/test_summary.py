"""fpn.data.summary: the resize and level rules equal the loader's and the model's, duplicates are found by content
reading as little as possible, and a COCO folder's bad boxes, crowd regions and counts come out as planted."""

import numpy as np
import pytest
import torch

from fpn.data.catalog import resolve_dataset
from fpn.data.datasets import describe_split
from fpn.data.summary import (
    BadReport,
    Geometry,
    anchor_levels,
    duplicate_groups,
    format_summary,
    inspect_dataset,
    resize_factors,
    roi_levels,
    summarize_split,
)
from fpn.data.transforms import resize_factor
from fpn.errors import UserError
from fpn.model.level_mapper import LevelMapper


@pytest.mark.parametrize("resize", ["fast", "torchvision"])
def test_resize_factors_are_the_loaders(resize):
    sizes = [(h, w) for h in (17, 48, 333, 480, 640, 1001) for w in (17, 64, 427, 500, 1333, 4000)]
    h, w = np.array(sizes).T
    for scale, max_size in ((600, 1000), (192, 288), (800, 1333)):
        want = [resize_factor(a, b, scale, max_size, resize) for a, b in sizes]
        assert resize_factors(w, h, scale, max_size, resize).tolist() == pytest.approx(want, rel=1e-12)


def test_levels_are_the_models():
    sizes = np.array([1.0, 13.9, 55.9, 56.0, 111.9, 112.0, 224.0, 447.9, 448.0, 900.0, 5000.0])
    for canonical in (224.0, 112.0):
        geo = Geometry(canonical_size=canonical)
        boxes = torch.tensor([[0.0, 0.0, s, s] for s in sizes.tolist()])
        assert roi_levels(sizes, geo).tolist() == LevelMapper(canonical, 4)(boxes).tolist()
    geo = Geometry(anchor_sizes=(32, 64, 128, 256, 512))
    # nearest anchor in log scale: 45 < 32 * sqrt(2) = 45.25 -> P2, 46 -> P3
    assert anchor_levels(np.array([5.0, 45.0, 46.0, 128.0, 700.0, 5000.0]), geo).tolist() == [2, 2, 3, 4, 6, 6]
    assert geo.reach == pytest.approx((32 * 0.7**0.5, 512 / 0.7**0.5))


def test_duplicates_by_content_reading_only_files_of_equal_size(tmp_path):
    data = {"a": b"x" * 5000, "b": b"x" * 5000, "c": b"x" * 4999 + b"y", "d": b"z" * 10, "e": b"x" * 4999}
    for name, content in data.items():
        (tmp_path / name).write_bytes(content)
    paths = [str(tmp_path / n) for n in ("a", "b", "c", "d", "e", "d")] + [str(tmp_path / "missing")]
    groups, read = duplicate_groups(paths)
    # a = b; c has their size and first 4096 bytes, so it is read whole too; d is listed twice; e differs in size
    assert groups == [[0, 1], [3, 5]] and read == 3


def _record(image_id, w, h, boxes, labels, difficult=None, crowd=None):
    n = len(labels)
    rec = {"id": image_id, "image": f"{image_id}.jpg", "width": w, "height": h,
           "boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64),
           "difficult": np.asarray(difficult or [False] * n), "truncated": np.zeros(n, bool)}  # fmt: skip
    if crowd is not None:
        rec["crowd"] = np.asarray(crowd)
    return rec


def test_difficult_and_crowd_objects_are_counted_apart():
    records = [
        _record("1", 100, 50, [[0, 0, 10, 10], [0, 0, 40, 40], [5, 5, 45, 45]], [1, 2, 2], [False, True, True],
                [False, False, True]),
        _record("2", 50, 100, [[0, 0, 20, 5]], [2], [True], [False]),
    ]
    for use_difficult, (objects, empty, per_class) in ((False, (1, 1, [1, 0])), (True, (3, 0, [1, 2]))):
        geo = Geometry(train_scale=100, train_max_size=1000, use_difficult=use_difficult)
        s, objs = summarize_split("train", ["x"], records, ("a", "b"), geo, BadReport())
        assert (s["objects"], s["images_without_objects"], s["difficult"], s["crowd"]) == (objects, empty, 2, 1)
        assert [c["objects"] for c in s["classes"]] == per_class and [c["crowd"] for c in s["classes"]] == [0, 1]
        assert s["image_size"]["width"] == {"min": 50.0, "p50": 75.0, "max": 100.0}
    # with difficult objects trained, both images resized x2 (shorter side 50 -> 100): a 10 px box, a 40 px one,
    # and a 20x5 one (10 px); the crowd region is not an object
    assert sorted(objs.sizes.tolist()) == [20.0, 20.0, 80.0]


def test_a_coco_folder_with_bad_boxes(tmp_path, make_coco):
    root = tmp_path / "ds"
    images = {
        1: (64, 48, [(1, [2, 2, 20, 10]), (2, [5, 5, 0, 10]), (2, [50, 30, 30, 30]), (1, [0, 0, 64, 48], 1)]),
        2: (40, 60, [(2, [100, 100, 5, 5])]),  # wholly outside: dropped
        3: (50, 40, []),
    }
    make_coco(root / "annotations" / "instances_train.json", images, images_dir=root / "train")
    make_coco(root / "annotations" / "instances_val.json", {4: (64, 48, [(1, [1, 1, 10, 10])])},
              images_dir=root / "val")  # fmt: skip
    spec = resolve_dataset(str(root))
    found = inspect_dataset(spec, Geometry(train_scale=48, test_scale=48), duplicates=True)
    train = found.summary["splits"]["train"]
    assert (train["images"], train["images_without_objects"], train["objects"], train["crowd"]) == (3, 2, 2, 1)
    assert [c["objects"] for c in train["classes"]] == [1, 1]
    bad = train["bad_boxes"]
    assert bad["reasons"] == {"no positive width and height, or not inside the image": 2,
                              "reaching outside the image": 1}  # fmt: skip
    assert bad["examples"][0].endswith("annotation ids 2, 5 dropped") and "COCO reader" in bad["handling"]
    assert len(bad["reader_warnings"]) == 1 and "dropped 2 of 5 annotations" in bad["reader_warnings"][0]
    assert found.summary["splits"]["test"]["objects"] == 1
    # image 1 and image 4 are drawn with the same colour and size: the same bytes
    dup = found.summary["duplicates"]["groups"]
    assert [[(m["split"], m["id"]) for m in g] for g in dup] == [[("train", "1"), ("test", "4")]]
    # the same counts as the line a training run starts with
    counts = ", ".join(f"{c['class']} {c['objects']}" for c in train["classes"])
    assert describe_split("train", found.records["train"], spec.classes) == (
        f"train: 3 images (2 without objects), 2 objects ({counts}); 0 difficult, 1 crowd regions left out")
    text = format_summary(found.summary)
    assert "train (train): 3 images (2 without objects), 2 objects; 0 difficult (left out), 1 crowd regions" in text
    assert "bad boxes: 3 (2 no positive width and height, or not inside the image, 1 reaching outside the image)" in text


def test_a_folder_without_a_test_list_is_counted_with_a_note(tmp_path, voc_folder):
    spec = resolve_dataset(str(voc_folder))
    found = inspect_dataset(spec, Geometry(), duplicates=False)
    assert list(found.summary["splits"]) == ["train"] and found.summary["duplicates"] is None
    assert found.summary["notes"] == [f"no test split ({voc_folder / 'ImageSets' / 'Main' / 'test.txt'} not found)"]
    s = found.summary["splits"]["train"]
    assert (s["images"], s["images_without_objects"], s["objects"], s["difficult"]) == (3, 1, 2, 1)
    assert "note: no test split" in format_summary(found.summary)
    with pytest.raises(UserError, match="image set 'test' not found"):  # asked for alone: it must be there
        inspect_dataset(spec, Geometry(), roles=("test",))
