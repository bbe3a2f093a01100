"""Detections written as labels (COCO JSON, VOC XML, YOLO txt: ``fpn.data.writers``, ``fpn demo --save-labels``)
read back by fpn's own readers: the same boxes within the format's rounding, the same classes, the scores where the
format has room."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_model import rectangles_image

from fpn.cli import main
from fpn.data.catalog import resolve_dataset
from fpn.data.coco import parse_coco, read_coco_json
from fpn.data.records import load_records
from fpn.data.voc import parse_voc_xml
from fpn.data.writers import LABEL_FORMATS, LabelWriter
from fpn.data.yolo import YoloSplit, list_images, parse_yolo_lines, read_split

CLASSES = ("cat", "r&d", "dog")
SIZES = {"a.jpg": (200, 150), "b.png": (97, 131), "c.jpg": (64, 64)}  # c: no detections


def _detections(seed: int, width: int, height: int, k: int):
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, width * 0.6, k), rng.uniform(0, height * 0.6, k)
    w, h = rng.uniform(2, width * 0.4, k), rng.uniform(2, height * 0.4, k)
    boxes = np.stack([x1, y1, x1 + w, y1 + h], 1).astype(np.float32)
    return boxes, rng.integers(1, 4, k), rng.uniform(0.3, 1, k).astype(np.float32)


@pytest.fixture
def written(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    dets = {}
    for i, (name, (w, h)) in enumerate(SIZES.items()):
        Image.new("RGB", (w, h), (30 * i, 90, 160)).save(images / name)
        dets[name] = _detections(i, w, h, 0 if name == "c.jpg" else 5)
    for fmt in LABEL_FORMATS:
        writer = LabelWriter(fmt, tmp_path / fmt, CLASSES, category_ids=[3, 7, 9] if fmt == "coco" else None,
                             scores_in_yolo=True)  # fmt: skip
        for name, (boxes, labels, scores) in dets.items():
            writer.add(name, *SIZES[name], boxes, labels, scores)
        writer.close()
    return tmp_path, images, dets


def test_coco_labels_read_back(written):
    root, images, dets = written
    path = root / "coco" / "annotations.json"
    coco = parse_coco(read_coco_json(path), path)
    assert coco.category_ids == (3, 7, 9) and coco.category_names == CLASSES
    records = coco.records(images)
    assert [(Path(r["image"]).name, r["width"], r["height"]) for r in records] == [(n, *s) for n, s in SIZES.items()]
    data = json.loads(path.read_text())
    for r, (boxes, labels, scores) in zip(records, dets.values()):
        np.testing.assert_allclose(r["boxes"], boxes, atol=0.006)  # 0.01 px rounding of x, y, w, h
        np.testing.assert_array_equal(r["labels"], labels)
        anns = [a for a in data["annotations"] if a["image_id"] == r["image_id"]]
        np.testing.assert_allclose([a["score"] for a in anns], scores, atol=5e-6)
        assert [a["category_id"] for a in anns] == [(3, 7, 9)[lab - 1] for lab in labels]


def test_voc_labels_read_back(written):
    root, images, dets = written
    class_to_label = {c.lower(): i + 1 for i, c in enumerate(CLASSES)}
    for name, (boxes, labels, scores) in dets.items():
        xml = root / "voc" / "Annotations" / f"{Path(name).stem}.xml"
        r = parse_voc_xml(xml, class_to_label, images / name)
        assert (r["width"], r["height"]) == SIZES[name]
        np.testing.assert_allclose(r["boxes"], boxes, atol=0.5)  # whole pixels, as the devkit writes them
        np.testing.assert_array_equal(r["labels"], labels)
        tree = ET.parse(xml).getroot()
        assert tree.findtext("filename") == name
        np.testing.assert_allclose([float(o.findtext("score")) for o in tree.iter("object")], scores, atol=5e-6)
    assert (root / "voc" / "classes.txt").read_text() == "cat\nr&d\ndog\n"
    assert (root / "voc" / "ImageSets" / "Main" / "trainval.txt").read_text() == "a\nb\nc\n"


def test_yolo_labels_read_back(written):
    root, images, dets = written
    names = list_images(images)
    records, problems = read_split(YoloSplit(images, root / "yolo" / "labels", "p"), names, len(CLASSES))
    assert problems.message("x") is None and [r["image"] for r in records] == ["a.jpg", "b.png", "c.jpg"]
    for r, (boxes, labels, scores) in zip(records, dets.values()):
        side = max(r["width"], r["height"])
        np.testing.assert_allclose(r["boxes"], boxes, atol=1e-6 * side + 1e-4)  # 6 decimals of the image side
        np.testing.assert_array_equal(r["labels"], labels)
        text = (root / "yolo" / "labels" / f"{r['id']}.txt").read_text()
        np.testing.assert_allclose(parse_yolo_lines(text, r["width"], r["height"], 3)[2], scores, atol=5e-6)
    # with its images in images/, the folder is a YOLO dataset fpn reads (data.yaml, names)
    shutil.copytree(images, root / "yolo" / "images")
    spec = resolve_dataset(str(root / "yolo"))
    assert spec.classes == CLASSES and spec.layout.startswith("YOLO txt (Ultralytics layout, classes from data.yaml)")
    assert [len(r["labels"]) for r in load_records(spec.train_sets, spec.classes)] == [5, 5, 0]


def test_yolo_without_scores_has_five_columns(tmp_path):
    writer = LabelWriter("yolo", tmp_path, CLASSES)
    writer.add("x.jpg", 100, 50, [[10, 10, 30, 40]], [3], [0.9])
    writer.close()
    assert (tmp_path / "labels" / "x.txt").read_text() == "2 0.200000 0.500000 0.200000 0.600000\n"
    assert (tmp_path / "classes.txt").read_text() == "cat\nr&d\ndog\n"


@pytest.mark.slow
def test_demo_save_labels_round_trip(tiny_checkpoint, tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    for i, (h, w) in enumerate([(128, 160), (160, 128)]):
        image, _ = rectangles_image(300 + i, h, w)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(images / f"im{i}.png")
    out = tmp_path / "out"
    assert main(["demo", "--checkpoint", str(tiny_checkpoint), str(images), "--out", str(out), "--thresh", "0.3",
                 "--device", "cpu", "--save-labels", "coco", "--save-labels", "voc", "--save-labels", "yolo",
                 "--save-conf", "--no-progress"]) == 0  # fmt: skip
    said = capsys.readouterr().out
    assert "COCO labels: category ids 1..C (the classes in order)" in said  # its dataset is not here
    assert f"wrote YOLO labels of 2 image(s) to {out / 'yolo' / 'labels'}" in said
    shown = json.loads((out / "detections.json").read_text())["images"]
    assert sum(len(s["detections"]) for s in shown) >= 4
    coco = parse_coco(read_coco_json(out / "coco" / "annotations.json"), "x").records(images)
    yolo, _ = read_split(YoloSplit(images, out / "yolo" / "labels", "p"), ["im0.png", "im1.png"], 3)
    classes = json.loads((out / "detections.json").read_text())["classes"]
    for s, c, y in zip(shown, coco, yolo):
        boxes = np.asarray([d["box"] for d in s["detections"]], np.float32).reshape(-1, 4)
        labels = [d["label"] for d in s["detections"]]
        voc = parse_voc_xml(out / "voc" / "Annotations" / f"{Path(s['image']).stem}.xml",
                            {n: i + 1 for i, n in enumerate(classes)}, s["image"])  # fmt: skip
        for r, tol in ((c, 0.011), (voc, 0.51), (y, 0.011)):  # detections.json rounds to 0.01 px itself
            np.testing.assert_allclose(r["boxes"], boxes, atol=tol)
            assert r["labels"].tolist() == labels


@pytest.mark.slow
def test_demo_coco_labels_keep_the_training_datasets_category_ids(tiny_checkpoint, tmp_path, capsys):
    import torch

    # the checkpoint, as if trained on a COCO-JSON folder whose categories red, green, blue have ids 3, 7, 9
    data = tmp_path / "labelled"
    (data / "annotations").mkdir(parents=True)
    (data / "train").mkdir()
    Image.new("RGB", (32, 32)).save(data / "train" / "x.jpg")
    (data / "annotations" / "instances_train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "x.jpg", "width": 32, "height": 32}], "annotations": [],
        "categories": [{"id": 3, "name": "red"}, {"id": 7, "name": "green"}, {"id": 9, "name": "blue"}]}))
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    ckpt["config"]["data"]["dataset"] = str(data)
    torch.save(ckpt, tmp_path / "ckpt.pth")
    image, _ = rectangles_image(300, 128, 160)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "im.png")
    assert main(["demo", "--checkpoint", str(tmp_path / "ckpt.pth"), str(tmp_path / "im.png"), "--out",
                 str(tmp_path / "out"), "--thresh", "0.3", "--device", "cpu", "--save-labels", "coco",
                 "--no-progress"]) == 0  # fmt: skip
    assert f"COCO labels: category ids of dataset {data}" in capsys.readouterr().out
    written = json.loads((tmp_path / "out" / "coco" / "annotations.json").read_text())
    assert written["categories"] == [{"id": 3, "name": "red", "supercategory": "none"},
                                     {"id": 7, "name": "green", "supercategory": "none"},
                                     {"id": 9, "name": "blue", "supercategory": "none"}]  # fmt: skip
    assert written["annotations"] and {a["category_id"] for a in written["annotations"]} <= {3, 7, 9}
    assert written["images"] == [{"id": 1, "file_name": "im.png", "width": 160, "height": 128}]
