import os
import re
from pathlib import Path

import numpy as np
import pytest

from fpn.data import catalog
from fpn.data.catalog import ImageSet, load_records, read_classes, resolve_dataset
from fpn.data.synthetic import DONE_MARKER
from fpn.data.voc import VOC_CLASSES
from fpn.errors import UserError

CLASSES = ("cat", "dog")

HAND_XML = """<annotation>
  <folder>VOC2007</folder><filename>000005.jpg</filename>
  <size><width>500</width><height>375</height><depth>3</depth></size>
  <object><name>chair</name><pose>Rear</pose><truncated>0</truncated><difficult>0</difficult>
    <bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox></object>
  <object><name>Dog</name><truncated>1</truncated><difficult>1</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>500</xmax><ymax>375</ymax></bndbox></object>
</annotation>
"""


def _set(root: Path, split: str = "trainval") -> ImageSet:
    return ImageSet(root, split)


def _rewrite(path: Path, text: str) -> None:
    """Replace a file's content and make sure its mtime moves even on coarse-clock file systems."""
    st = path.stat()
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


# --- parsing ------------------------------------------------------------------------------------------------


def test_hand_written_annotation_parses_exactly(make_voc, tmp_path):
    root = make_voc(tmp_path / "VOC2007", {"000005": (500, 375, [])}, classes=None)
    (root / "Annotations" / "000005.xml").write_text(HAND_XML)
    (rec,) = load_records([_set(root)], VOC_CLASSES, cache_dir=tmp_path / "cache")
    assert rec["id"] == "000005"
    assert rec["image"] == str(root / "JPEGImages" / "000005.jpg")
    assert (rec["width"], rec["height"]) == (500, 375)
    np.testing.assert_array_equal(rec["boxes"], np.array([[262, 210, 324, 339], [0, 0, 500, 375]], np.float32))
    assert rec["boxes"].dtype == np.float32
    np.testing.assert_array_equal(rec["labels"], [9, 12])  # chair, dog (1-based, name case ignored)
    assert rec["labels"].dtype == np.int64
    np.testing.assert_array_equal(rec["difficult"], [False, True])
    np.testing.assert_array_equal(rec["truncated"], [False, True])


def test_records_follow_list_order_and_concatenate_sets(make_voc, tmp_path):
    r1 = make_voc(tmp_path / "one", {"x2": (30, 20, []), "x1": (30, 20, [("dog", (2, 3, 4, 5))])})
    r2 = make_voc(tmp_path / "two", {"y": (20, 30, [("cat", (1, 1, 20, 30))])})
    recs = load_records([_set(r1), _set(r2)], CLASSES)
    assert [r["id"] for r in recs] == ["x2", "x1", "y"]
    assert recs[0]["boxes"].shape == (0, 4) and recs[0]["labels"].shape == (0,)  # empty image kept
    np.testing.assert_array_equal(recs[1]["boxes"], [[1, 2, 4, 5]])
    np.testing.assert_array_equal(recs[1]["labels"], [2])
    np.testing.assert_array_equal(recs[2]["labels"], [1])


# --- cache --------------------------------------------------------------------------------------------------


def _forbid_parsing(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("parsed although the cache is valid")

    monkeypatch.setattr(catalog, "parse_voc_xml", boom)


def test_cache_is_written_in_root_and_hit(voc_folder, monkeypatch):
    first = load_records([_set(voc_folder)], CLASSES)
    files = list((voc_folder / "annotations_cache").glob("*.pkl"))
    assert len(files) == 1 and files[0].name.startswith("VOCtiny_trainval_")
    _forbid_parsing(monkeypatch)
    second = load_records([_set(voc_folder)], CLASSES)
    assert [r["id"] for r in second] == [r["id"] for r in first]
    for a, b in zip(first, second):
        assert a["image"] == b["image"]
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
        np.testing.assert_array_equal(a["labels"], b["labels"])


def test_cache_rebuilt_when_an_annotation_changes(voc_folder, tmp_path):
    cache = tmp_path / "cache"
    load_records([_set(voc_folder)], CLASSES, cache_dir=cache)
    xml = voc_folder / "Annotations" / "b.xml"
    _rewrite(xml, xml.read_text().replace("<xmax>30</xmax>", "<xmax>33</xmax>"))
    rec = load_records([_set(voc_folder)], CLASSES, cache_dir=cache)[1]
    np.testing.assert_array_equal(rec["boxes"], [[4, 5, 33, 50]])


def test_cache_rebuilt_when_the_list_or_classes_change(voc_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    load_records([_set(voc_folder)], CLASSES, cache_dir=cache)
    _rewrite(voc_folder / "ImageSets" / "Main" / "trainval.txt", "c\na\n")
    assert [r["id"] for r in load_records([_set(voc_folder)], CLASSES, cache_dir=cache)] == ["c", "a"]
    recs = load_records([_set(voc_folder)], ("dog", "cat"), cache_dir=cache)
    np.testing.assert_array_equal(recs[1]["labels"], [2, 1])
    _forbid_parsing(monkeypatch)  # both variants are cached side by side
    assert [r["id"] for r in load_records([_set(voc_folder)], CLASSES, cache_dir=cache)] == ["c", "a"]


def test_corrupt_cache_file_is_rebuilt(voc_folder, tmp_path):
    cache = tmp_path / "cache"
    load_records([_set(voc_folder)], CLASSES, cache_dir=cache)
    (f,) = cache.glob("*.pkl")
    f.write_bytes(b"not a pickle")
    assert len(load_records([_set(voc_folder)], CLASSES, cache_dir=cache)) == 3
    assert f.read_bytes() != b"not a pickle"


def test_unwritable_default_cache_falls_back_to_user_cache(voc_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (voc_folder / "annotations_cache").write_text("a file where the cache folder would go")
    assert len(load_records([_set(voc_folder)], CLASSES)) == 3
    assert len(list((tmp_path / "xdg" / "fpn" / "annotations_cache").glob("*.pkl"))) == 1
    _forbid_parsing(monkeypatch)
    assert len(load_records([_set(voc_folder)], CLASSES)) == 3


def test_unwritable_cache_dir_warns_and_still_loads(voc_folder, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="annotation cache not written"):
        recs = load_records([_set(voc_folder)], CLASSES, cache_dir=blocker / "cache")
    assert len(recs) == 3


# --- bad inputs: a UserError naming the file ---------------------------------------------------------------


def _error(root: Path, classes=CLASSES, split="trainval") -> str:
    with pytest.raises(UserError) as e:
        load_records([_set(root, split)], classes, cache_dir=root.parent / "cache")
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_malformed_xml(voc_folder):
    (voc_folder / "Annotations" / "b.xml").write_text("<annotation><size>")
    msg = _error(voc_folder)
    assert msg.startswith(str(voc_folder / "Annotations" / "b.xml")) and "malformed XML" in msg


def test_missing_xml_names_list_file_and_line(voc_folder):
    (voc_folder / "Annotations" / "b.xml").unlink()
    msg = _error(voc_folder)
    assert msg.startswith(f"{voc_folder / 'ImageSets' / 'Main' / 'trainval.txt'}:2:")
    assert str(voc_folder / "Annotations" / "b.xml") in msg


def test_missing_image_names_list_file_line_and_image(voc_folder):
    (voc_folder / "JPEGImages" / "c.jpg").unlink()
    msg = _error(voc_folder)
    assert msg.startswith(f"{voc_folder / 'ImageSets' / 'Main' / 'trainval.txt'}:3:")
    assert str(voc_folder / "JPEGImages" / "c.jpg") in msg and "does not exist" in msg


def test_missing_image_after_caching_is_still_an_error(voc_folder):
    load_records([_set(voc_folder)], CLASSES, cache_dir=voc_folder.parent / "cache")
    (voc_folder / "JPEGImages" / "a.jpg").unlink()
    assert ":1:" in _error(voc_folder)


@pytest.mark.parametrize(
    "bbox, words",
    [((30, 5, 10, 20), "inverted box"), ((1, 1, 41, 20), "outside the 40x60 image"), ((0, 1, 10, 20), "outside")],
)
def test_bad_boxes(make_voc, voc_folder, bbox, words):
    make_voc(voc_folder, {"b": (40, 60, [("dog", bbox)])}, split="bad")
    msg = _error(voc_folder, split="bad")
    assert msg.startswith(str(voc_folder / "Annotations" / "b.xml")) and words in msg


def test_unknown_class(voc_folder):
    msg = _error(voc_folder, classes=("cat",))
    assert msg.startswith(str(voc_folder / "Annotations" / "a.xml")) and "unknown class 'dog'" in msg


def test_empty_image_set(voc_folder):
    (voc_folder / "ImageSets" / "Main" / "empty.txt").write_text("\n  \n")
    msg = _error(voc_folder, split="empty")
    assert msg == f"{voc_folder / 'ImageSets' / 'Main' / 'empty.txt'}: image set is empty"


def test_missing_split_file(voc_folder):
    msg = _error(voc_folder, split="test")
    assert msg.startswith(str(voc_folder / "ImageSets" / "Main" / "test.txt")) and "not found" in msg


def test_duplicate_and_multi_token_lines(voc_folder):
    (voc_folder / "ImageSets" / "Main" / "dup.txt").write_text("a\nb\na\n")
    assert re.search(r"dup\.txt:3: image 'a' is already listed on line 1", _error(voc_folder, split="dup"))
    (voc_folder / "ImageSets" / "Main" / "cls.txt").write_text("a  1\n")
    assert "cls.txt:1: expected one image id per line" in _error(voc_folder, split="cls")


def test_missing_jpeg_folder(voc_folder):
    for f in (voc_folder / "JPEGImages").iterdir():
        f.unlink()
    (voc_folder / "JPEGImages").rmdir()
    assert _error(voc_folder).startswith(f"{voc_folder / 'JPEGImages'}: image folder not found")


# --- classes.txt ----------------------------------------------------------------------------------------------


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
    (root / DONE_MARKER).write_text("{}\n")
    spec = resolve_dataset("synthetic", tmp_path)
    assert spec.classes == ("circle", "square") and spec.metric == "voc07"
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
