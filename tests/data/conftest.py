"""Tiny VOC-layout folders for the data pipeline tests (fixtures only: test modules do not import this
file, since several test folders may have a conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fpn.data.voc import write_voc_xml

CLASSES = ("cat", "dog")


def write_voc_folder(
    root: Path,
    images: dict[str, tuple[int, int, list]],
    split: str = "trainval",
    classes: tuple[str, ...] | None = CLASSES,
) -> Path:
    """Write ``images`` (id -> (width, height, objects)) as JPEGs + XMLs, the split's list file and
    (unless ``classes`` is None) classes.txt. Returns ``root``. An object is a tuple (name, (x1, y1, x2,
    y2) VOC 1-based inclusive[, difficult])."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k, (image_id, (w, h, objects)) in enumerate(images.items()):
        Image.new("RGB", (w, h), (40 * k % 256, 100, 200)).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        objects = [obj(*o) for o in objects]
        write_voc_xml(root / "Annotations" / f"{image_id}.xml", f"{image_id}.jpg", w, h, objects)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    if classes is not None:
        (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    return root


def obj(name: str, bbox: tuple[int, int, int, int], difficult: bool = False) -> dict:
    return {"name": name, "bbox": bbox, "difficult": difficult, "truncated": False}


# three images: landscape with a difficult object, portrait, and one without objects
SMALL = {
    "a": (64, 48, [("cat", (1, 1, 32, 24)), ("dog", (10, 5, 64, 48), True)]),
    "b": (40, 60, [("dog", (5, 6, 30, 50))]),
    "c": (50, 40, []),
}


@pytest.fixture
def make_voc():
    """``write_voc_folder(root, images, split="trainval", classes=("cat", "dog") or None)``."""
    return write_voc_folder


@pytest.fixture
def voc_folder(tmp_path: Path) -> Path:
    """``tmp_path/VOCtiny``, classes cat, dog; trainval = a, b, c:
    a 64x48 (landscape): cat (1, 1, 32, 24), difficult dog (10, 5, 64, 48);
    b 40x60 (portrait): dog (5, 6, 30, 50);  c 50x40: no objects."""
    return write_voc_folder(tmp_path / "VOCtiny", SMALL)


def write_coco_file(path: Path, images: dict, categories=((1, "cat"), (2, "dog")), images_dir: Path | None = None,
                    **extra) -> Path:  # fmt: skip
    """Write a COCO annotation file and (into ``images_dir``, default the file's folder) a JPEG per image.
    ``images``: id -> (width, height, [(category_id, [x, y, w, h], iscrowd?), ...]); annotation ids are
    numbered from 1 in that order. ``extra`` keys go into the top-level object."""
    import json

    images_dir = path.parent if images_dir is None else images_dir
    images_dir.mkdir(parents=True, exist_ok=True)
    data = {"images": [], "annotations": [], "categories": [{"id": c, "name": n} for c, n in categories], **extra}
    for k, (image_id, (w, h, anns)) in enumerate(images.items()):
        name = f"{image_id:06d}.jpg"
        Image.new("RGB", (w, h), (40 * k % 256, 100, 200)).save(images_dir / name, quality=95)
        data["images"].append({"id": image_id, "file_name": name, "width": w, "height": h})
        for cat, bbox, *crowd in anns:
            data["annotations"].append({
                "id": len(data["annotations"]) + 1, "image_id": image_id, "category_id": cat, "bbox": bbox,
                "area": bbox[2] * bbox[3], "iscrowd": int(bool(crowd and crowd[0])),
                "segmentation": [[bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1]]],
            })  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# two images and one without objects; categories listed out of id order
COCO_SMALL = {
    7: (64, 48, [(5, [1.5, 2.0, 30.0, 20.0]), (2, [10, 5, 50, 40], 1)]),
    3: (40, 60, [(2, [5, 6, 25, 44])]),
    9: (50, 40, []),
}
COCO_CATEGORIES = ((5, "zebra"), (2, "ant"))


@pytest.fixture
def make_coco():
    """``write_coco_file(path, images, categories=((1, "cat"), (2, "dog")), images_dir=None, **extra)``."""
    return write_coco_file


@pytest.fixture
def coco_file(tmp_path: Path) -> Path:
    """``tmp_path/coco/instances_train.json`` (images beside it), categories 5 zebra, 2 ant (listed in that order):
    image 7 64x48: zebra [1.5, 2, 30, 20], crowd ant [10, 5, 50, 40]; image 3 40x60: ant [5, 6, 25, 44];
    image 9 50x40: no objects."""
    return write_coco_file(tmp_path / "coco" / "instances_train.json", COCO_SMALL, COCO_CATEGORIES)
