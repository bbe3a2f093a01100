"""COCO-JSON folder layouts detected by fpn.data.layouts, as resolve_dataset reports them."""

import re

import pytest

from fpn.data import catalog
from fpn.data.catalog import resolve_dataset
from fpn.data.records import load_records
from fpn.errors import UserError

ONE = {1: (20, 20, [(1, [2, 2, 5, 5])])}


def test_coco_layout_annotations_folder(make_coco, tmp_path):
    root = tmp_path / "mine"
    make_coco(root / "annotations" / "instances_train2017.json", ONE, images_dir=root / "train2017")
    make_coco(root / "annotations" / "instances_val2017.json", ONE, images_dir=root / "val2017")
    for other in ("captions_train2017.json", "person_keypoints_val2017.json", "image_info_test2017.json"):
        (root / "annotations" / other).write_text("{}")  # COCO's other files are not annotations of boxes
    spec = resolve_dataset(str(root), tmp_path)
    assert (spec.classes, spec.category_ids, spec.metric, spec.year) == (("cat", "dog"), (1, 2), "coco", "coco")
    ann = root / "annotations"
    assert spec.train_sets == [catalog.CocoSplit(ann / "instances_train2017.json", root / "train2017", "train2017")]
    assert spec.test_sets == [catalog.CocoSplit(ann / "instances_val2017.json", root / "val2017", "val2017")]
    assert spec.layout == (
        "COCO JSON, layout annotations/instances_<split>.json: train annotations/instances_train2017.json "
        "(images train2017/), test annotations/instances_val2017.json (images val2017/)"
    )
    assert len(load_records(spec.test_sets, spec.classes, category_ids=spec.category_ids)) == 1
    # a test file wins over a val file; a shared images/ folder; <split>.json without the prefix
    make_coco(root / "annotations" / "test.json", ONE, images_dir=root / "images")
    (root / "val2017").rename(root / "unused")
    spec = resolve_dataset(str(root), tmp_path)
    assert spec.test_sets == [catalog.CocoSplit(ann / "test.json", root / "images", "test")]
    make_coco(root / "annotations" / "instances_train2014.json", ONE)
    with pytest.raises(UserError, match=re.escape(
            f"{ann}: several train annotation files (instances_train2014.json, instances_train2017.json); choose "
            "one with --set data.train_json=FILE data.train_images=FOLDER")):  # fmt: skip
        resolve_dataset(str(root), tmp_path)


def test_coco_layout_split_folders(make_coco, tmp_path):
    root = tmp_path / "roboflow"
    make_coco(root / "train" / "_annotations.coco.json", ONE)
    make_coco(root / "valid" / "_annotations.coco.json", {2: (30, 20, [])})
    spec = resolve_dataset(str(root), tmp_path, classes_from="test")
    assert spec.train_sets == [catalog.CocoSplit(root / "train" / "_annotations.coco.json", root / "train", "train")]
    assert spec.test_sets == [catalog.CocoSplit(root / "valid" / "_annotations.coco.json", root / "valid", "valid")]
    assert "layout train/, valid/ (or val/), test/ folders: train train/_annotations.coco.json (images train/)" in (
        spec.layout)  # fmt: skip
    make_coco(root / "test" / "_annotations.coco.json", ONE)
    assert resolve_dataset(str(root), tmp_path).test_sets[0].split == "test"  # test wins over valid
    (root / "test" / "more.json").write_text("{}")
    with pytest.raises(UserError, match=re.escape(f"{root / 'test'}: holds several .json files")):
        resolve_dataset(str(root), tmp_path)


def test_a_folder_with_voc_files_is_voc_and_one_with_neither_layout_is_an_error(make_voc, voc_folder, tmp_path):
    spec = resolve_dataset(str(voc_folder), tmp_path)
    assert spec.layout == "VOC layout (classes.txt; ImageSets/Main/trainval.txt for training, test.txt for testing)"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'empty'}: neither a VOC-layout folder")):
        resolve_dataset(str(tmp_path / "empty"), tmp_path)


