"""Dataset names and folders resolved by fpn.data.catalog."""

import re
from pathlib import Path

import numpy as np
import pytest

from fpn.data import catalog
from fpn.data.catalog import read_classes, resolve_dataset
from fpn.data.records import ImageSet, load_records
from fpn.data.synthetic import DONE_MARKER
from fpn.data.voc import VOC_CLASSES
from fpn.errors import UserError

CLASSES = ("cat", "dog")

def test_read_classes(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("circle\n\n  square \n")
    assert read_classes(f) == ("circle", "square")
    for text, words in [
        ("a\nb\nA\n", "classes.txt:3: class 'A' is already listed on line 1"),
        ("__background__\na\n", "classes.txt:1: do not list the background class"),
        ("\n\n", "lists no classes"),
        ("big cat\n", "contains whitespace"),
    ]:
        f.write_text(text)
        with pytest.raises(UserError, match=re.escape(words)):
            read_classes(f)
    with pytest.raises(UserError, match="nothere.txt: not found"):
        read_classes(tmp_path / "nothere.txt")


def test_classes_are_matched_case_insensitively(make_voc, tmp_path):
    root = make_voc(tmp_path / "d", {"i": (20, 20, [("dog", (1, 1, 5, 5))])}, classes=("Cat", "Dog"))
    spec = resolve_dataset(str(root), tmp_path)
    assert spec.classes == ("Cat", "Dog")
    np.testing.assert_array_equal(load_records(spec.train_sets, spec.classes)[0]["labels"], [2])


# --- resolving dataset names -----------------------------------------------------------------------------------


def _voc_dirs(root: Path) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    return root


def test_pascal_voc_seed_layout(tmp_path):
    r07 = _voc_dirs(tmp_path / "VOCdevkit2007" / "VOC2007")
    spec = resolve_dataset("pascal_voc", tmp_path)
    assert spec.classes == VOC_CLASSES and len(spec.classes) == 20
    assert spec.train_sets == [ImageSet(r07, "trainval")] and spec.test_sets == [ImageSet(r07, "test")]
    assert (spec.year, spec.metric) == ("2007", "voc07")


def test_pascal_voc_0712_standard_layout(tmp_path):
    r07 = _voc_dirs(tmp_path / "VOCdevkit" / "VOC2007")
    r12 = _voc_dirs(tmp_path / "VOCdevkit" / "VOC2012")
    spec = resolve_dataset("pascal_voc_0712", tmp_path)
    assert spec.train_sets == [ImageSet(r07, "trainval"), ImageSet(r12, "trainval")]
    assert spec.test_sets == [ImageSet(r07, "test")]
    assert (spec.year, spec.metric) == ("2007", "voc07")


def test_missing_voc_says_where_to_get_it(tmp_path):
    with pytest.raises(UserError) as e:
        resolve_dataset("pascal_voc", tmp_path / "data")
    msg = str(e.value)
    assert str(tmp_path / "data" / "VOCdevkit2007" / "VOC2007") in msg
    assert str(tmp_path / "data" / "VOCdevkit" / "VOC2007") in msg
    assert "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/" in msg and "VOCtest_06-Nov-2007.tar" in msg
    _voc_dirs(tmp_path / "data" / "VOCdevkit" / "VOC2007")
    with pytest.raises(UserError, match=re.escape("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/")):
        resolve_dataset("pascal_voc_0712", tmp_path / "data")


def test_synthetic(make_voc, tmp_path):
    with pytest.raises(UserError, match=re.escape(f"`fpn synth --out {tmp_path / 'synthetic'}`")):
        resolve_dataset("synthetic", tmp_path)
    root = make_voc(tmp_path / "synthetic", {"000001": (20, 20, [])}, classes=("circle", "square"))
    with pytest.raises(UserError, match="incomplete"):  # no DONE marker: an interrupted run
        resolve_dataset("synthetic", tmp_path)
    (root / DONE_MARKER).write_text('{"seed": 311, "n_train": 1}\n')
    spec = resolve_dataset("synthetic", tmp_path)
    assert spec.classes == ("circle", "square") and spec.metric == "voc07"
    assert spec.generator == {"seed": 311, "n_train": 1}  # the folder's own parameters, for the run to record
    assert spec.train_sets == [ImageSet(root, "trainval")] and spec.test_sets == [ImageSet(root, "test")]


def test_custom_folder(make_voc, tmp_path, voc_folder):
    spec = resolve_dataset(str(voc_folder), tmp_path)
    assert spec.classes == CLASSES and spec.metric == "voc07" and spec.year == "custom"
    assert spec.train_sets == [ImageSet(voc_folder, "trainval")] and spec.test_sets == [ImageSet(voc_folder, "test")]
    # train/val when there is no trainval/test; a VOC2010+ name selects area AP
    root = make_voc(tmp_path / "VOC2012", {"i": (20, 20, [])}, split="train")
    (root / "ImageSets" / "Main" / "val.txt").write_text("i\n")
    spec = resolve_dataset(str(root), tmp_path)
    assert (spec.train_sets[0].split, spec.test_sets[0].split) == ("train", "val")
    assert (spec.year, spec.metric) == ("2012", "area")


def test_custom_folder_errors(make_voc, tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        resolve_dataset("nope", tmp_path)
    root = make_voc(tmp_path / "mine", {"i": (20, 20, [])}, classes=None)
    with pytest.raises(UserError, match=re.escape(f"{root / 'classes.txt'}: not found")):
        resolve_dataset(str(root), tmp_path)


# --- COCO JSON datasets -------------------------------------------------------------------------------------

ONE = {1: (20, 20, [(1, [2, 2, 5, 5])])}


def test_explicit_coco_files(make_coco, tmp_path):
    train = make_coco(tmp_path / "a" / "train.json", ONE)
    test = make_coco(tmp_path / "b" / "labels.json", ONE, images_dir=tmp_path / "b" / "pics")
    spec = resolve_dataset("mydata", tmp_path, train_json=str(train), test_json=str(test),
                           test_images=str(tmp_path / "b" / "pics"))  # fmt: skip
    assert spec.train_sets == [catalog.CocoSplit(train, train.parent, "train")]  # images default to the JSON's folder
    assert spec.test_sets == [catalog.CocoSplit(test, tmp_path / "b" / "pics", "test")]
    assert spec.name == "mydata" and spec.classes == ("cat", "dog")
    only_test = resolve_dataset("mydata", tmp_path, test_json=str(test), test_images=str(tmp_path / "b" / "pics"))
    assert only_test.train_sets == [] and only_test.classes == ("cat", "dog")
    with pytest.raises(UserError, match="data.train_images is set but data.train_json is not"):
        resolve_dataset("mydata", tmp_path, train_images=str(tmp_path))
    with pytest.raises(UserError, match="--dataset coco: names a dataset, but data.train_json"):
        resolve_dataset("coco", tmp_path, train_json=str(train))


def test_coco2017_and_where_to_get_it(make_coco, tmp_path):
    with pytest.raises(UserError, match=re.escape("https://cocodataset.org/#download")) as e:
        resolve_dataset("coco", tmp_path)
    assert "train2017.zip" in str(e.value) and str(tmp_path / "coco" / "val2017") in str(e.value)
    root = tmp_path / "coco"
    make_coco(root / "annotations" / "instances_val2017.json", ONE, images_dir=root / "val2017")
    spec = resolve_dataset("coco", tmp_path, classes_from="test")  # testing needs only val2017
    assert spec.test_sets[0].split == "val2017" and spec.classes == ("cat", "dog")
    with pytest.raises(UserError, match=re.escape("instances_train2017.json: COCO annotation file not found; COCO")):
        resolve_dataset("coco", tmp_path)  # training's classes come from train2017
