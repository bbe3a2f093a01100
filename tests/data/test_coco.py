"""COCO JSON: the reader (records, bad boxes, malformed files, the segmentation cut) and its cache."""

import json
import os
import re
import warnings

import numpy as np
import pytest

from fpn.data import coco, records
from fpn.data.records import CocoSplit, coco_categories, load_records
from fpn.data.coco import CLIP_TOLERANCE, read_coco_json, records_to_coco
from fpn.errors import DataWarning, UserError


def _split(path, images=None):
    return CocoSplit(path, path.parent if images is None else images, "train")


def _load(path, classes=("ant", "zebra"), **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning expected unless the test says so
        return load_records([_split(path)], classes, cache_dir=path.parent / "cache", **kw)


def test_records_labels_in_id_order_boxes_xyxy_crowd_and_empty_images(coco_file):
    split = _split(coco_file)
    assert coco_categories(split, coco_file.parent / "cache") == ((2, 5), ("ant", "zebra"))
    recs = _load(coco_file, category_ids=(2, 5))
    assert [(r["id"], r["image_id"]) for r in recs] == [("7", 7), ("3", 3), ("9", 9)]  # file order
    a, b, c = recs
    assert a["image"] == str(coco_file.parent / "000007.jpg") and (a["width"], a["height"]) == (64, 48)
    np.testing.assert_array_equal(a["boxes"], np.array([[1.5, 2, 31.5, 22], [10, 5, 60, 45]], np.float32))
    assert a["boxes"].dtype == np.float32 and a["labels"].dtype == np.int64
    np.testing.assert_array_equal(a["labels"], [2, 1])  # zebra (id 5) is label 2, ant (id 2) label 1
    np.testing.assert_array_equal(a["crowd"], [False, True])
    np.testing.assert_array_equal(a["difficult"], a["crowd"])  # crowd regions are ignored by VOC's evaluation too
    np.testing.assert_array_equal(a["truncated"], [False, False])
    np.testing.assert_array_equal(b["boxes"], [[5, 6, 30, 50]])
    assert c["boxes"].shape == (0, 4) and c["labels"].shape == (0,) and c["crowd"].shape == (0,)


def test_records_to_coco_is_the_inverse_and_marks_difficult_as_crowd(coco_file, tmp_path):
    recs = _load(coco_file)
    data = records_to_coco(recs, ("ant", "zebra"), (2, 5), images_dir=coco_file.parent)
    path = tmp_path / "again" / "instances_x.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    again = load_records([_split(path, coco_file.parent)], ("ant", "zebra"), cache_dir=tmp_path / "cache")
    for r, s in zip(recs, again):
        for key in ("id", "image", "width", "height", "image_id"):
            assert r[key] == s[key]
        for key in ("boxes", "labels", "crowd"):
            np.testing.assert_array_equal(r[key], s[key])
    voc_like = [{"image": "x/1.jpg", "width": 9, "height": 9, "boxes": np.array([[0, 0, 2, 3.0], [1, 1, 5, 5]]),
                 "labels": np.array([1, 1]), "difficult": np.array([False, True])}]  # fmt: skip
    anns = records_to_coco(voc_like, ("ant",))["annotations"]
    assert [(a["bbox"], a["area"], a["iscrowd"], a["category_id"]) for a in anns] == [
        ([0, 0, 2, 3], 6, 0, 1), ([1, 1, 4, 4], 16, 1, 1)]  # fmt: skip


def test_bad_boxes_are_dropped_or_clipped_with_one_summary_warning(make_coco, tmp_path):
    w, h = 100, 80
    anns = [
        (1, [10, 10, 0, 5]),  # 1: zero width -> dropped
        (1, [10, 10, 5, -2]),  # 2: negative height -> dropped
        (1, [120, 10, 5, 5]),  # 3: entirely right of the image -> dropped
        (1, [-6, 10, 20, 20]),  # 4: 6 px left of the image -> clipped, reported
        (1, [90, 70, 10 + CLIP_TOLERANCE / 2, 10]),  # 5: within the tolerance -> clipped silently
        (1, [5, 5, 10, 10]),  # 6: fine
        (1, [1, 1, 1e309, 5]),  # 7: infinite width -> dropped
    ]
    path = make_coco(tmp_path / "bad.json", {1: (w, h, anns)}, ((1, "cat"),))
    with pytest.warns(DataWarning) as caught:
        (rec,) = load_records([_split(path)], ("cat",), cache_dir=tmp_path / "cache")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"{path}: dropped 4 of 7 annotations") and "ids 1, 2, 3, 7)" in message
    assert "clipped 1 boxes" in message and "(ids 4)" in message
    np.testing.assert_array_equal(rec["boxes"], [[0, 10, 14, 30], [90, 70, 100, 80], [5, 5, 15, 15]])
    with pytest.warns(DataWarning, match="dropped 4 of 7"):  # the same warning when read from the cache
        load_records([_split(path)], ("cat",), cache_dir=tmp_path / "cache")


GOOD = {"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}],
        "categories": [{"id": 1, "name": "cat"}]}  # fmt: skip


def _with(section, index, **fields):
    data = json.loads(json.dumps(GOOD))
    data[section][index].update(fields)
    return data


@pytest.mark.parametrize("data, words", [
    ("{not json", "malformed JSON (Expecting property name enclosed in double quotes: line 1 column 2"),
    ([1, 2], "holds a JSON object, not list"),
    ({"images": [], "categories": GOOD["categories"]}, "'annotations' is missing"),
    (_with("annotations", 0, image_id=2), "annotation 4 refers to image 2, which is not in 'images'"),
    (_with("annotations", 0, category_id=9), "annotation 4 has category_id 9, which is not in 'categories'"),
    (_with("annotations", 0, bbox=[1, 2, 3]), "annotation 4 has no bbox [x, y, width, height] (got [1, 2, 3])"),
    (_with("annotations", 0, iscrowd=2), "annotation 4 has iscrowd 2, expected 0 or 1"),
    ({**GOOD, "images": GOOD["images"] * 2}, "image id 1 is listed twice"),
    (_with("images", 0, width=0), "image 1 has no positive integer 'width' (got 0)"),
    (_with("images", 0, id="1"), "images[0].id must be an integer, got '1'"),
    ({**GOOD, "categories": GOOD["categories"] * 2}, "category id 1 is listed twice"),
    ({**GOOD, "categories": []}, "lists no categories"),
])  # fmt: skip
def test_malformed_files_are_one_line_errors_naming_file_and_id(tmp_path, data, words):
    path = tmp_path / "x.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(UserError) as e:
        load_records([_split(path)], ("cat",), cache_dir=tmp_path / "cache")
    assert str(e.value).startswith(f"{path}: ") and words in str(e.value) and "\n" not in str(e.value)


def test_missing_files_and_folders(coco_file, tmp_path):
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'none.json'}: COCO annotation file not found; see X")):
        load_records([CocoSplit(tmp_path / "none.json", tmp_path, "x", hint="see X")], ("ant", "zebra"))
    no_folder = f"{tmp_path / 'imgs'}: image folder not found (needed by {coco_file})"
    with pytest.raises(UserError, match=re.escape(no_folder)):
        load_records([CocoSplit(coco_file, tmp_path / "imgs", "x")], ("ant", "zebra"))
    (coco_file.parent / "000003.jpg").unlink()
    (coco_file.parent / "000009.jpg").unlink()
    missing = f"{coco_file}: image 3 is listed but {coco_file.parent / '000003.jpg'} does not exist (1 more images"
    with pytest.raises(UserError, match=re.escape(missing)):
        _load(coco_file)


def test_other_categories_than_the_datasets_are_an_error(coco_file):
    with pytest.raises(UserError, match=re.escape(f"{coco_file}: its 2 categories (2: ant, 5: zebra, ...) differ")):
        _load(coco_file, classes=("zebra", "ant"))
    with pytest.raises(UserError, match="differ from the dataset's"):
        _load(coco_file, category_ids=(1, 2))


def test_segmentation_values_are_cut_and_nothing_else(tmp_path):
    tricky = 'a \\"segmentation\\": [1, 2] b'  # the key's text inside a string value stays
    data = {
        "info": {"note": json.loads(f'"{tricky}"'), "segmentation_like": [[1, 2]]},
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
        "annotations": [
            {"segmentation": [[1.5, 2e-3, -3.0E+2, 4], [5, 6]], "id": 1, "bbox": [1, 1, 2, 2]},
            {"id": 2, "segmentation": {"counts": "a[b]\\\\c;0", "size": [10, 10]}, "bbox": [1, 1, 2, 2]},
            {"id": 3, "segmentation" : {"size": [10, 10], "counts": [1, 2, 97]}, "bbox": [1, 1, 2, 2]},
        ],
        "categories": [{"id": 1, "name": "segmentation"}],
    }
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data, indent=1).replace('"segmentation": {"size"', '"segmentation" : {"size"'))
    got = read_coco_json(path)
    for ann in data["annotations"]:
        ann["segmentation"] = 0
    assert got == data


# --- cache --------------------------------------------------------------------------------------------------


def test_cache_written_beside_the_json_hit_and_rebuilt_when_the_json_changes(coco_file, monkeypatch):
    first = load_records([_split(coco_file)], ("ant", "zebra"))
    (cache,) = (coco_file.parent / "annotations_cache").glob("*.pkl")
    assert cache.name.startswith("instances_train_")

    def boom(*a, **k):
        raise AssertionError("parsed although the cache is valid")

    monkeypatch.setattr(records, "parse_coco", boom)
    again = load_records([_split(coco_file)], ("ant", "zebra"))
    assert coco_categories(_split(coco_file)) == ((2, 5), ("ant", "zebra"))
    assert [r["image"] for r in again] == [r["image"] for r in first]
    for a, b in zip(again, first):
        np.testing.assert_array_equal(a["boxes"], b["boxes"])

    monkeypatch.setattr(records, "parse_coco", coco.parse_coco)
    data = json.loads(coco_file.read_text())
    data["annotations"][0]["bbox"] = [2, 2, 4, 4]
    st = coco_file.stat()
    coco_file.write_text(json.dumps(data))
    os.utime(coco_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    (rec, *_) = load_records([_split(coco_file)], ("ant", "zebra"))
    np.testing.assert_array_equal(rec["boxes"][0], [2, 2, 6, 6])


def test_truncated_cache_file_is_rebuilt(coco_file):
    load_records([_split(coco_file)], ("ant", "zebra"))
    (cache,) = (coco_file.parent / "annotations_cache").glob("*.pkl")
    cache.write_bytes(cache.read_bytes()[:200])  # the header survives, the annotations do not
    assert len(load_records([_split(coco_file)], ("ant", "zebra"))) == 3
