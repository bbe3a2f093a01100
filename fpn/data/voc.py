"""PASCAL VOC annotation files: read and write the devkit's XML.

Coordinates: VOC stores 1-based inclusive pixel boxes (``x1..x2`` covers ``x2 - x1 + 1`` pixels). In
memory we use continuous pixel coordinates, ``(x1 - 1, y1 - 1, x2, y2)``, whose width ``x2 - x1`` is the
same pixel count; ``to_voc_box`` converts back when writing result files.

A *record* is one image's annotation, a plain picklable dict::

    {"id": str, "image": str (path), "width": int, "height": int,
     "boxes": float32 (K, 4) continuous xyxy, "labels": int64 (K,) in 1..C (0 is background),
     "difficult": bool (K,), "truncated": bool (K,)}
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from fpn.errors import UserError
from fpn.io import atomic_write_text

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


def _text(node: ET.Element, tag: str, path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise UserError(f"{path}: missing <{tag}> in <{node.tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path) -> float:
    raw = _text(node, tag, path)
    try:
        return float(raw)
    except ValueError:
        raise UserError(f"{path}: <{tag}> is not a number: '{raw}'") from None


def parse_voc_xml(path: str | Path, class_to_label: dict[str, int], image_path: str | Path) -> dict:
    """Parse one annotation file into a record; any defect raises a UserError naming the file."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise UserError(f"{path}: annotation file not found") from None
    except ET.ParseError as e:
        raise UserError(f"{path}: malformed XML ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read annotation ({e.strerror})") from None
    size = root.find("size")
    if size is None:
        raise UserError(f"{path}: missing <size>")
    width, height = int(_number(size, "width", path)), int(_number(size, "height", path))
    if width <= 0 or height <= 0:
        raise UserError(f"{path}: image size {width}x{height} is not positive")

    boxes, labels, difficult, truncated = [], [], [], []
    for i, obj in enumerate(root.iter("object")):
        name = _text(obj, "name", path).lower()
        if name not in class_to_label:
            raise UserError(f"{path}: object {i + 1} has unknown class '{name}'")
        bb = obj.find("bndbox")
        if bb is None:
            raise UserError(f"{path}: object {i + 1} ({name}) has no <bndbox>")
        x1, y1, x2, y2 = (_number(bb, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        if x2 < x1 or y2 < y1:
            raise UserError(f"{path}: object {i + 1} ({name}) has an inverted box ({x1:g},{y1:g},{x2:g},{y2:g})")
        if x1 < 1 or y1 < 1 or x2 > width or y2 > height:
            raise UserError(
                f"{path}: object {i + 1} ({name}) box ({x1:g},{y1:g},{x2:g},{y2:g}) "
                f"lies outside the {width}x{height} image"
            )
        boxes.append((x1 - 1, y1 - 1, x2, y2))
        labels.append(class_to_label[name])
        d = obj.find("difficult")
        difficult.append(d is not None and (d.text or "0").strip() == "1")
        t = obj.find("truncated")
        truncated.append(t is not None and (t.text or "0").strip() == "1")

    return {
        "id": path.stem,
        "image": str(image_path),
        "width": width,
        "height": height,
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "difficult": np.asarray(difficult, dtype=bool),
        "truncated": np.asarray(truncated, dtype=bool),
    }


def to_voc_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    """Continuous xyxy -> VOC 1-based inclusive (inverse of the parser's conversion)."""
    x1, y1, x2, y2 = box
    return x1 + 1, y1 + 1, x2, y2


def write_voc_xml(
    path: str | Path, filename: str, width: int, height: int, objects: Sequence[dict], folder: str = "VOC2007"
) -> None:
    """Write a devkit-style annotation. Each object: ``{"name", "bbox": (x1, y1, x2, y2) 1-based
    inclusive ints, "difficult": bool, "truncated": bool, "pose": str (optional)}``."""
    lines = [
        "<annotation>",
        f"\t<folder>{folder}</folder>",
        f"\t<filename>{filename}</filename>",
        "\t<source>\n\t\t<database>fpn synthetic</database>\n\t</source>",
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for obj in objects:
        x1, y1, x2, y2 = (int(v) for v in obj["bbox"])
        lines += [
            "\t<object>",
            f"\t\t<name>{obj['name']}</name>",
            f"\t\t<pose>{obj.get('pose', 'Unspecified')}</pose>",
            f"\t\t<truncated>{int(bool(obj.get('truncated', False)))}</truncated>",
            f"\t\t<difficult>{int(bool(obj.get('difficult', False)))}</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>{y1}</ymin>\n\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    lines.append("</annotation>")
    atomic_write_text(path, "\n".join(lines) + "\n")
