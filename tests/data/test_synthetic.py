"""The synthetic VOC-layout dataset: determinism, layout, annotation rules, statistics, and ``fpn synth``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpn.cli import main
from fpn.data import synthetic
from fpn.data.synthetic import SYNTH_CLASSES, _Scene, generate, is_complete, matches, read_marker
from fpn.data.voc import parse_voc_xml
from fpn.errors import UserError

CLASS_TO_LABEL = {c: i + 1 for i, c in enumerate(SYNTH_CLASSES)}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _records(root: Path) -> list[dict]:
    ids = [i for s in ("trainval", "test") for i in (root / f"ImageSets/Main/{s}.txt").read_text().split()]
    return [parse_voc_xml(root / f"Annotations/{i}.xml", CLASS_TO_LABEL, root / f"JPEGImages/{i}.jpg")
            for i in ids]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Enough images for the statistics to be stable (the generator is deterministic, seed 0)."""
    return generate(tmp_path_factory.mktemp("synth") / "ds", seed=0, n_train=150, n_test=50)


# --- determinism --------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    a = _files(generate(tmp_path / "a", seed=3, n_train=6, n_test=3))
    b = _files(generate(tmp_path / "b", seed=3, n_train=6, n_test=3))
    c = _files(generate(tmp_path / "c", seed=4, n_train=6, n_test=3))
    assert a == b
    assert a.keys() == c.keys()
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert len(jpgs) == 9 and all(a[k] != c[k] for k in jpgs)


def test_parallel_generation_writes_the_same_files(tmp_path, monkeypatch):
    serial = _files(generate(tmp_path / "serial", seed=5, n_train=7, n_test=4, workers=1))
    monkeypatch.setattr(synthetic, "PARALLEL_MIN_IMAGES", 0)  # use the process pool even for 11 images
    parallel = _files(generate(tmp_path / "parallel", seed=5, n_train=7, n_test=4, workers=2))
    assert parallel == serial


def test_jpeg_encoding_is_deterministic():
    assert synthetic.render_image(7, 2)[0] == synthetic.render_image(7, 2)[0]


# --- layout -------------------------------------------------------------------------------------------------


def test_layout_is_a_voc_devkit_folder(tmp_path):
    root = generate(tmp_path / "ds", seed=1, n_train=5, n_test=3)
    assert sorted(p.name for p in root.iterdir()) == [
        ".fpn_synthetic", "Annotations", "DONE", "ImageSets", "JPEGImages", "classes.txt"]  # fmt: skip
    assert sorted(p.name for p in (root / "ImageSets").rglob("*")) == ["Main", "test.txt", "trainval.txt"]
    assert (root / "ImageSets/Main/trainval.txt").read_text() == "000001\n000002\n000003\n000004\n000005\n"
    assert (root / "ImageSets/Main/test.txt").read_text() == "000006\n000007\n000008\n"
    assert (root / "classes.txt").read_text().splitlines() == list(SYNTH_CLASSES)
    ids = [f"{i:06d}" for i in range(1, 9)]
    assert sorted(p.stem for p in (root / "JPEGImages").iterdir()) == ids
    assert sorted(p.stem for p in (root / "Annotations").iterdir()) == ids
    xml = (root / "Annotations/000001.xml").read_text()
    assert "<filename>000001.jpg</filename>" in xml and "<folder>synthetic</folder>" in xml


@pytest.mark.slow
def test_every_annotation_parses_and_matches_its_image(dataset):
    records = _records(dataset)
    assert len(records) == 200
    for r in records:
        with Image.open(r["image"]) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (r["width"], r["height"])
        b = r["boxes"]
        # parse_voc_xml already rejects boxes outside the image; also require at least one pixel
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        assert np.all(b[:, :2] >= 0) and np.all(b[:, 2] <= r["width"]) and np.all(b[:, 3] <= r["height"])
        assert len(b) <= synthetic.MAX_OBJECTS


@pytest.mark.slow
def test_marker_counts_agree_with_the_annotations(dataset):
    records = _records(dataset)
    info = read_marker(dataset)
    assert info["images"] == 200 and (info["n_train"], info["n_test"], info["seed"]) == (150, 50, 0)
    assert info["objects"] == sum(len(r["labels"]) for r in records)
    assert info["truncated"] == sum(int(r["truncated"].sum()) for r in records)
    assert info["difficult"] == sum(int(r["difficult"].sum()) for r in records)
    assert info["empty_images"] == sum(len(r["labels"]) == 0 for r in records)
    labels = np.concatenate([r["labels"] for r in records])
    assert info["per_class"] == {c: int((labels == i + 1).sum()) for i, c in enumerate(SYNTH_CLASSES)}


# --- statistics ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dataset_statistics_exercise_a_detector(dataset):
    records = _records(dataset)
    labels = np.concatenate([r["labels"] for r in records])
    boxes = np.concatenate([r["boxes"] for r in records])
    difficult = np.concatenate([r["difficult"] for r in records])
    truncated = np.concatenate([r["truncated"] for r in records])
    counts = np.bincount(labels, minlength=len(SYNTH_CLASSES) + 1)[1:]
    assert counts.min() >= 30  # every class, roughly balanced
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    size = np.sqrt(w * h)
    assert size.min() < 16 and size.max() > 200  # every pyramid level has objects
    assert 30 < np.median(size) < 100  # not absurdly small on average
    assert (w / h).min() < 0.6 and (w / h).max() > 1.7  # varied object aspect ratios
    assert 0.05 < truncated.mean() < 0.4 and 0.02 < difficult.mean() < 0.2
    aspects = [r["width"] / r["height"] for r in records]
    assert min(aspects) < 0.55 and max(aspects) > 1.8
    sides = [s for r in records for s in (r["width"], r["height"])]
    assert min(sides) >= synthetic.IMAGE_MIN_SIDE and max(sides) <= synthetic.IMAGE_LONG_SIDE[1]
    n = [len(r["labels"]) for r in records]
    assert 0 < n.count(0) < 20 and max(n) == synthetic.MAX_OBJECTS
    # objects overlap: some pair of boxes in some image intersects
    assert any(_overlaps(r["boxes"]) for r in records)


def _overlaps(b: np.ndarray) -> bool:
    iw = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
    ih = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
    inter = (iw > 0) & (ih > 0)
    np.fill_diagonal(inter, False)
    return bool(inter.any())


@pytest.mark.slow
def test_difficult_and_truncated_rules_hold_on_the_data(dataset):
    for r in _records(dataset):
        b = r["boxes"]
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        tiny = (np.sqrt(w * h) < synthetic.DIFFICULT_SIZE) | (np.minimum(w, h) < synthetic.DIFFICULT_SIDE)
        assert np.all(r["difficult"][tiny])  # tiny => difficult
        # a truncated object is cut by the border, so its (visible) box touches it
        at_border = (b[:, 0] == 0) | (b[:, 1] == 0) | (b[:, 2] == r["width"]) | (b[:, 3] == r["height"])
        assert np.all(at_border[r["truncated"]])


def test_scene_boxes_occlusion_and_truncation_by_hand():
    scene = _Scene(w=100, h=60)
    square = np.ones((20, 20), bool)
    assert scene.place("square", square, 10, 10) is not None  # cols 10..29, rows 10..29
    assert scene.place("circle", square, 25, 10) is not None  # hides cols 25..29 of the first: 75% visible
    assert scene.place("star", square, 12, 10) is None  # would leave the first 2 of 20 columns: rejected
    assert scene.place("ring", square, 90, 50) is None  # only 25% inside the image: rejected
    assert scene.place("cross", square, 85, 45) is not None  # 15x15 of 20x20 inside: truncated
    assert scene.place("hexagon", square, 50, 0) is not None
    inner = np.zeros((20, 20), bool)
    inner[2:18, 2:18] = True  # hides all but a 2-pixel frame of the hexagon: 144 / 400 = 36% visible
    assert scene.place("triangle", inner, 50, 0) is not None
    small = np.zeros((13, 20), bool)
    small[:, :13] = True  # 13x13 pixels: tiny
    assert scene.place("crescent", small, 10, 40) is not None
    objs = scene.objects()
    assert [o["name"] for o in objs] == ["square", "circle", "cross", "hexagon", "triangle", "crescent"]
    assert [o["bbox"] for o in objs] == [
        (11, 11, 25, 30), (26, 11, 45, 30), (86, 46, 100, 60),
        (51, 1, 70, 20), (53, 3, 68, 18), (11, 41, 23, 53)]  # fmt: skip
    assert [o["truncated"] for o in objs] == [False, False, True, False, False, False]
    assert [o["difficult"] for o in objs] == [False, False, False, True, False, True]


# --- completeness and overwriting ---------------------------------------------------------------------------


def test_interrupted_run_is_detected_and_regenerated(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    real = synthetic.render_image

    def failing(seed, index):
        if index == 3:
            raise KeyboardInterrupt
        return real(seed, index)

    monkeypatch.setattr(synthetic, "render_image", failing)
    with pytest.raises(KeyboardInterrupt):
        generate(out, seed=0, n_train=4, n_test=2)
    assert (out / "JPEGImages/000003.jpg").exists() and not is_complete(out)
    assert not matches(out, 0, 4, 2)
    monkeypatch.setattr(synthetic, "render_image", real)
    generate(out, seed=0, n_train=4, n_test=2)
    assert is_complete(out) and matches(out, 0, 4, 2) and not matches(out, 1, 4, 2)


@pytest.mark.slow
def test_regenerating_smaller_removes_stale_files(tmp_path):
    out = generate(tmp_path / "ds", seed=0, n_train=5, n_test=2)
    generate(out, seed=0, n_train=2, n_test=1)
    assert sorted(p.name for p in (out / "JPEGImages").iterdir()) == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert len(list((out / "Annotations").iterdir())) == 3
    assert read_marker(out)["images"] == 3


def test_generate_refuses_bad_arguments_and_foreign_folders(tmp_path):
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "Annotations").mkdir()
    with pytest.raises(UserError, match="not empty and does not hold a synthetic dataset"):
        generate(tmp_path / "voc", n_train=1, n_test=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        generate(tmp_path / "file", n_train=1, n_test=1)
    with pytest.raises(UserError, match="at least 1 trainval"):
        generate(tmp_path / "new", n_train=-1, n_test=1)
    with pytest.raises(UserError, match="seed"):
        generate(tmp_path / "new", seed=-2, n_train=1, n_test=1)
    assert not (tmp_path / "new").exists()


# --- the command --------------------------------------------------------------------------------------------


def test_cli_writes_then_reuses_then_regenerates(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["synth", "--out", str(out), "--train", "4", "--test", "2", "--seed", "5"]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "6 images (4 trainval, 2 test" in line and "of 8 classes" in line
    info = read_marker(out)
    assert f"{info['objects']} objects" in line and f"{info['truncated']} truncated" in line
    assert f"{info['difficult']} difficult" in line and (out / "JPEGImages/000006.jpg").exists()
    done_mtime = (out / "DONE").stat().st_mtime_ns

    assert main(["synth", "--out", str(out), "--train", "4", "--test", "2", "--seed", "5"]) == 0
    assert "already holds this dataset, nothing to do" in capsys.readouterr().out
    assert (out / "DONE").stat().st_mtime_ns == done_mtime

    assert main(["synth", "--out", str(out), "--train", "3", "--test", "2", "--seed", "5"]) == 0
    assert "wrote 5 images" in capsys.readouterr().out and not (out / "JPEGImages/000006.jpg").exists()



def test_coco_format_holds_the_voc_boxes_with_difficult_objects_as_crowd(tmp_path):
    from fpn.data.catalog import resolve_dataset
    from fpn.data.records import CocoSplit, ImageSet, load_records

    both = generate(tmp_path / "both", seed=2, n_train=6, n_test=3, formats=("coco", "voc"))
    for split in ("trainval", "test"):
        voc = load_records([ImageSet(both, split)], SYNTH_CLASSES)
        coco = load_records([CocoSplit(both / "annotations" / f"instances_{split}.json", both / "JPEGImages", split)],
                            SYNTH_CLASSES)  # fmt: skip
        assert [r["image"] for r in voc] == [r["image"] for r in coco]
        assert [int(r["id"]) for r in voc] == [r["image_id"] for r in coco]
        for v, c in zip(voc, coco):
            np.testing.assert_array_equal(v["boxes"], c["boxes"])
            np.testing.assert_array_equal(v["labels"], c["labels"])
            np.testing.assert_array_equal(v["difficult"], c["crowd"])
    assert resolve_dataset(str(both)).metric == "voc07"  # both layouts: the VOC files win
    coco_only = generate(tmp_path / "coco", seed=2, n_train=6, n_test=3, formats=("coco",))
    assert not (coco_only / "classes.txt").exists() and not (coco_only / "ImageSets").exists()
    assert resolve_dataset(str(coco_only)).metric == "coco"
    assert _files(coco_only)["JPEGImages/000004.jpg"] == _files(both)["JPEGImages/000004.jpg"]


def test_cli_format_switch_rewrites_and_leaves_no_other_format(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["synth", "--out", str(out), "--train", "3", "--test", "2", "--format", "both"]) == 0
    assert matches(out, 0, 3, 2, ("voc", "coco")) and not matches(out, 0, 3, 2)
    assert main(["synth", "--out", str(out), "--train", "3", "--test", "2", "--format", "coco"]) == 0
    assert "wrote 5 images" in capsys.readouterr().out
    assert synthetic.formats(out) == ("coco",) and not list(out.glob("Annotations/*.xml"))
    assert main(["synth", "--out", str(out), "--train", "3", "--test", "2", "--format", "voc"]) == 0
    assert not (out / "annotations" / "instances_test.json").exists() and (out / "classes.txt").is_file()
    marker = read_marker(out)
    del marker["formats"]  # a dataset written before formats existed is VOC
    (out / "DONE").write_text(json.dumps(marker))
    assert matches(out, 0, 3, 2) and synthetic.formats(out) == ("voc",)

@pytest.mark.parametrize(
    "flags, message",
    [
        (["--train", "-1"], "error: --train: must be a positive number of images, got -1"),
        (["--test", "0"], "error: --test: must be a positive number of images, got 0"),
        (["--workers", "-1"], "error: --workers: must be 0 (one per CPU core) or more, got -1"),
        (["--seed", "-3"], "error: --seed: must be >= 0, got -3"),
    ],
)
def test_cli_bad_counts(tmp_path, capsys, flags, message):
    assert main(["synth", "--out", str(tmp_path / "ds"), *flags]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "ds").exists()


def test_cli_bad_out(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["synth", "--out", str(tmp_path / "file"), "--train", "1", "--test", "1"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {tmp_path / 'file'}: exists and is not a folder"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["synth", "--out", str(tmp_path / "other"), "--train", "1", "--test", "1"]) == 2
    assert "does not hold a synthetic dataset" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_sizes_span_the_pyramid_log_uniformly():
    """Object sizes are log-uniform from MIN_SIZE: each octave of the range gets a share of objects."""
    sizes = []
    for i in range(120):
        for o in synthetic.render_image(11, i)[3]:
            x1, y1, x2, y2 = o["bbox"]
            sizes.append(math.sqrt((x2 - x1 + 1) * (y2 - y1 + 1)))
    octaves = np.histogram(np.log2(sizes), bins=[3.5, 4, 5, 6, 7, 9])[0]  # 11..16, 16..32, ..., 128..512
    assert octaves[0] > 0 and np.all(octaves[1:] >= 30)
