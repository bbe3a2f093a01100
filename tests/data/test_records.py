"""Reading a dataset's splits into records (fpn.data.records): VOC XML parsing, the annotation cache, errors."""

import os
import re
from pathlib import Path

import numpy as np
import pytest

from fpn.data import records
from fpn.data.records import ImageSet, load_records
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

    monkeypatch.setattr(records, "parse_voc_xml", boom)


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


