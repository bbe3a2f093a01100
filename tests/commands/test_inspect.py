"""``fpn inspect`` end to end on a VOC-layout folder with planted problems: its printed and JSON counts equal what was
planted (bad boxes and their reasons, an image without objects, duplicate images within and across splits), its
PNGs are real pictures, and mistakes are one-line errors."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from fpn.cli import main
from fpn.data.voc import write_voc_xml

CLASSES = ("cat", "dog", "bird")
# id -> (width, height, [(class, VOC 1-based inclusive box, difficult?)])
TRAIN = {
    "a": (64, 48, [("cat", (1, 1, 32, 24)), ("dog", (10, 5, 64, 48), True)]),
    "b": (40, 60, [("dog", (5, 6, 30, 50)), ("cat", (20, 10, 15, 30))]),  # the cat's box is inverted: dropped
    "c": (50, 40, []),  # no objects
    "d": (64, 48, [("cat", (30, 20, 80, 40))]),  # reaches outside the 64 px wide image: clipped
    "e": (64, 48, [("dog", (2, 2, 6, 6))]),  # the same bytes as a; a 5 px dog
    "f": (50, 50, [("dog", (60, 60, 70, 70))]),  # a box wholly outside the image: dropped, so no objects
}
TEST = {"t": (40, 60, [("dog", (5, 6, 30, 50))])}  # the same bytes as b


def write_planted(root):
    """TRAIN as trainval, TEST as test, in the VOC layout; e.jpg a copy of a.jpg, t.jpg of b.jpg."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, images in (("trainval", TRAIN), ("test", TEST)):
        for image_id, (w, h, objects) in images.items():
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
            objs = [{"name": n, "bbox": box, "difficult": bool(rest and rest[0])} for n, box, *rest in objects]
            write_voc_xml(root / "Annotations" / f"{image_id}.xml", f"{image_id}.jpg", w, h, objs)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    shutil.copy(root / "JPEGImages" / "a.jpg", root / "JPEGImages" / "e.jpg")
    shutil.copy(root / "JPEGImages" / "b.jpg", root / "JPEGImages" / "t.jpg")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


@pytest.fixture(scope="module")
def inspected(tmp_path_factory):
    """(stdout, summary.json, output folder) of `fpn inspect` on the planted folder: anchors 16..256, training
    images resized to shorter side 96 (a, d, e: x2; b: x2.4), tests to 120."""
    tmp = tmp_path_factory.mktemp("inspect")
    root = write_planted(tmp / "planted")
    out = tmp / "out"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["inspect", "--dataset", str(root), "--out", str(out), "--sheet", "4", "--preset", "synthetic",
                   "--set", "data.train_scales=96", "data.test_scale=120", "data.max_size=1000",
                   "data.test_max_size=1000"])  # fmt: skip
    assert rc == 0
    return buf.getvalue(), json.loads((out / "summary.json").read_text()), out


@pytest.mark.slow
def test_counts_equal_the_planted_dataset(inspected):
    _, s, _ = inspected
    train, test = s["splits"]["train"], s["splits"]["test"]
    assert (train["images"], train["images_without_objects"], train["objects"], train["difficult"]) == (6, 2, 4, 1)
    assert [(c["class"], c["objects"], c["images"], c["difficult"]) for c in train["classes"]] == [
        ("cat", 2, 2, 0), ("dog", 2, 2, 1), ("bird", 0, 0, 0)]
    assert (test["images"], test["images_without_objects"], test["objects"]) == (1, 0, 1)
    # sizes at the input: a's cat 32x24 x2 = 55.4, b's dog 26x45 x2.4 = 82.1, d's clipped cat 35x21 x2 = 54.2,
    # e's dog 5x5 x2 = 10 (under 16 * sqrt(0.7) = 13.4: no anchor reaches IoU 0.7)
    assert train["size"]["min"] == 10.0 and train["size"]["max"] == 82.1
    assert train["roi_level"] == {"P2": 3, "P3": 1, "P4": 0, "P5": 0}  # floor(4 + log2(size / 112))
    assert train["anchor_level"] == {"P2": 1, "P3": 0, "P4": 3, "P5": 0, "P6": 0}
    assert train["below_anchor_reach"] == 1 and test["size"]["min"] == round(34.205 * 3, 1)  # t: x3


@pytest.mark.slow
def test_bad_boxes_are_counted_with_their_reasons(inspected):
    out, s, _ = inspected
    bad = s["splits"]["train"]["bad_boxes"]
    assert bad["reasons"] == {"no positive width and height": 1, "reaching outside the image": 1,
                              "not inside the image": 1}  # fmt: skip
    assert bad["total"] == 3 and bad["files"] == 3 and bad["handling"].startswith("refused")
    assert any("b.xml: object 2 (cat) box (20,10,15,30)" in e for e in bad["examples"])
    assert s["splits"]["test"]["bad_boxes"]["total"] == 0
    assert "bad boxes: 3 (1 no positive width and height, 1 reaching outside the image, 1 not inside the image)" in out


@pytest.mark.slow
def test_duplicates_within_and_across_splits(inspected):
    out, s, _ = inspected
    groups = [[(m["split"], m["id"]) for m in g] for g in s["duplicates"]["groups"]]
    assert sorted(groups) == [[("train", "a"), ("train", "e")], [("train", "b"), ("test", "t")]]
    assert s["duplicates"]["files_read_whole"] == 4
    warnings = "\n".join(s["warnings"])
    assert "1 image(s) of one split are also in another (same bytes), e.g. train b = test t" in warnings
    assert "1 group(s) of identical images within a split, e.g. train a = e" in warnings
    assert "train: 3 classes have fewer than 10 objects to learn from (cat 2, dog 2, bird 0)" in warnings
    assert "test: 2 classes have no objects, so no AP (cat, bird)" in warnings
    assert "train: 1 of 4 boxes (25.0%) are smaller than 13.4 px" in warnings
    assert out.count("warning: ") == len(s["warnings"]) == 6


@pytest.mark.slow
def test_pictures_are_real_pngs(inspected):
    _, _, folder = inspected
    for name in ("contact_sheet_train.png", "box_sizes_train.png", "contact_sheet_test.png", "box_sizes_test.png"):
        path = folder / name
        assert path.stat().st_size > 2000, name
        with Image.open(path) as im:
            assert im.format == "PNG"
            pixels = np.asarray(im.convert("RGB"))
        assert pixels.std() > 20, name  # not blank
    with Image.open(folder / "contact_sheet_train.png") as im:
        assert im.size == (2 * 260 + 4, 2 * 276 + 4)  # 4 images on a 2 x 2 grid of 256 px tiles and captions
    assert not list(folder.glob(".*.tmp"))  # written atomically


def test_a_bad_dataset_is_a_one_line_error(tmp_path, capsys):
    assert main(["inspect", "--dataset", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: unknown dataset '{tmp_path / 'nothing'}'") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_a_missing_synthetic_dataset_is_not_generated(tmp_path, capsys):
    assert main(["inspect", "--dataset", "synthetic", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "the synthetic dataset does not exist; write it with `fpn synth" in err and err.count("\n") == 1
    assert not (tmp_path / "synthetic").exists()


def test_a_negative_sheet_is_a_one_line_error(tmp_path, capsys):
    assert main(["inspect", "--dataset", "synthetic", "--sheet", "-1"]) == 2
    assert capsys.readouterr().err == "error: --sheet -1: expected 0 (no contact sheet) or a number of images\n"


def test_an_unwritable_out_is_a_one_line_error_before_counting(tmp_path, capsys):
    root = write_planted(tmp_path / "planted")
    (tmp_path / "file").write_text("x")
    assert main(["inspect", "--dataset", str(root), "--out", str(tmp_path / "file" / "o")]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"error: --out {tmp_path / 'file' / 'o'}: cannot create the folder") and err.count("\n") == 1
    assert out == ""  # nothing counted, nothing said
