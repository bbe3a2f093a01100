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
