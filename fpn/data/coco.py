"""COCO JSON annotation files (``instances_*.json`` and what labelling tools export): read and write.

:func:`read_coco_json` parses a file; :func:`parse_coco` checks it and turns it into
:class:`CocoAnnotations`, a columnar form (one array per field over all annotations) that is cheap to
cache; :meth:`CocoAnnotations.records` gives the records of :mod:`fpn.data.voc` plus two COCO fields::

    {"id": str(image id), "image": str, "width": int, "height": int,
     "boxes": float32 (K, 4) continuous xyxy, "labels": int64 (K,) in 1..C,
     "difficult": bool (K,) (= crowd), "truncated": bool (K,) (all False),
     "image_id": int (the COCO image id), "crowd": bool (K,) (``iscrowd=1``)}

Conventions:

- COCO ``bbox`` is ``[x, y, w, h]`` in continuous pixels: the record box is ``[x, y, x + w, y + h]``.
- Categories sorted by id get the labels 1..C; their names are the class names (``category_ids[c - 1]``
  is label c's id).
- A crowd annotation (``iscrowd=1``) is an ignore region: never an object to train on, never background
  (see ``fpn.model.targets``), and ignored by the evaluation. It is also marked ``difficult``, so the VOC
  evaluator ignores it too.
- Bad boxes, as real datasets have a few (COCO train2017 has degenerate ones), do not stop a run: a box
  without positive width and height, with a non-finite number, or with no part inside the image is dropped;
  one reaching outside the image is clipped to it. :class:`BadBoxes` counts them for one summary warning;
  overshoots of at most ``CLIP_TOLERANCE`` px (rounding in the exporting tool) are clipped without counting.
- Anything else wrong (not JSON, a missing field, an annotation of an unknown image or category, a
  duplicate id) is a one-line UserError naming the file and the id.

Memory: polygons and RLE masks (``segmentation``) are most of a COCO file (about 85% of train2017's
450 MB) and boxes never need them, so :func:`read_coco_json` cuts their values out of the bytes before
parsing (a regular expression that only ever matches a value of a ``"segmentation"`` key, see
``_SEGMENTATION``); the parsed objects then take a few hundred MB instead of several GB.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from fpn.errors import UserError
from fpn.io import atomic_write_text

CLIP_TOLERANCE = 1.0  # px outside the image that are clipped without being reported
_REPORT_IDS = 5  # annotation ids named in the summary warning

# The value of a "segmentation" key: a list of polygons (numbers, commas, brackets, whitespace) or an RLE
# object {"counts": ..., "size": [h, w]} (its counts string uses the characters 48..111: no braces, no
# quotes, so the object holds no nested braces). Inside a JSON string every '"' is escaped, so the literal
# `"segmentation"` followed by ':' can only be an object key (or the tail of a key ending in
# `\"segmentation`, never read here either).
_SEGMENTATION = re.compile(rb'"segmentation"\s*:\s*(?:\[[-+.\deE,\s\[\]]*\]|\{[^{}]*\})')


def read_coco_json(path: str | Path) -> dict:
    """The file's top-level object, ``segmentation`` values replaced by 0; a UserError for a missing,
    unreadable or malformed file (with the position of the error in the original file)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: COCO annotation file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a COCO JSON file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    stripped = _SEGMENTATION.sub(b'"segmentation":0', raw)
    del raw  # the original bytes are not needed while parsing: a smaller peak
    try:
        data = json.loads(stripped)
    except (ValueError, UnicodeDecodeError):
        del stripped
        try:  # parse the original to report where it is broken
            json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: malformed JSON ({e})") from None
        raise UserError(f"{path}: malformed segmentation value") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a COCO annotation file holds a JSON object, not {type(data).__name__}")
    return data


@dataclass
class BadBoxes:
    """What :func:`parse_coco` dropped and clipped: counts and the first few annotation ids of each."""

    total: int = 0
    dropped: int = 0
    clipped: int = 0
    dropped_ids: list = field(default_factory=list)
    clipped_ids: list = field(default_factory=list)

    def message(self, path: str | Path) -> str | None:
        """The one summary warning, or None when every box was fine."""
        if not (self.dropped or self.clipped):
            return None
        parts = []
        if self.dropped:
            parts.append(
                f"dropped {self.dropped} of {self.total} annotations (no positive width and height, or not "
                f"inside the image; ids {_id_list(self.dropped_ids, self.dropped)})"
            )
        if self.clipped:
            parts.append(
                f"clipped {self.clipped} boxes reaching more than {CLIP_TOLERANCE:g} px outside the image "
                f"(ids {_id_list(self.clipped_ids, self.clipped)})"
            )
        return f"{path}: " + "; ".join(parts)


def _id_list(ids: list, count: int) -> str:
    return ", ".join(str(i) for i in ids) + (", ..." if count > len(ids) else "")


@dataclass
class CocoAnnotations:
    """One COCO file, checked and columnar. M images (file order), K kept annotations grouped by image
    (file order within an image): image ``i`` owns annotations ``offsets[i]:offsets[i + 1]``."""

    category_ids: tuple[int, ...]  # sorted; label c is category_ids[c - 1]
    category_names: tuple[str, ...]
    image_ids: np.ndarray  # int64 (M,)
    widths: np.ndarray  # int64 (M,)
    heights: np.ndarray  # int64 (M,)
    file_names: list[str]  # (M,)
    offsets: np.ndarray  # int64 (M + 1,)
    boxes: np.ndarray  # float32 (K, 4) continuous xyxy, clipped to the image
    labels: np.ndarray  # int64 (K,) in 1..C
    crowd: np.ndarray  # bool (K,)
    bad: BadBoxes

    def records(self, images_dir: str | Path) -> list[dict]:
        """One record per image (module docstring); arrays are views into this object's columns. Image
        paths are ``images_dir/file_name`` (an absolute file_name is kept as it is)."""
        prefix = str(images_dir).rstrip("/\\")
        prefix = prefix + "/" if prefix else ""
        no = np.zeros(len(self.labels), dtype=bool)
        o = self.offsets.tolist()
        out = []
        for i, (image_id, w, h, name) in enumerate(
            zip(self.image_ids.tolist(), self.widths.tolist(), self.heights.tolist(), self.file_names)
        ):
            a, b = o[i], o[i + 1]
            crowd = self.crowd[a:b]
            out.append({
                "id": str(image_id), "image": name if name.startswith("/") else prefix + name, "width": w, "height": h,
                "boxes": self.boxes[a:b], "labels": self.labels[a:b], "difficult": crowd, "truncated": no[a:b],
                "image_id": image_id, "crowd": crowd,
            })  # fmt: skip
        return out


def int_id(value, what: str, path: Path) -> int:
    """``value`` when it is an integer, else a UserError naming the file and ``what``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{path}: {what} must be an integer, got {value!r}")
    return value


def list_of_objects(data: dict, key: str, path: Path) -> list:
    """``data[key]`` when it is a list of JSON objects, else a UserError naming the file and key."""
    items = data.get(key)
    if not isinstance(items, list):
        what = "missing" if items is None else f"a {type(items).__name__}, not a list"
        raise UserError(f"{path}: '{key}' is {what} (a COCO annotation file has images, annotations, categories)")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(f"{path}: {key}[{i}] is not a JSON object")
    return items


def bbox_of(ann: dict, ann_id, path: Path) -> list:
    """An annotation's ``bbox`` when it is 4 numbers, else a UserError naming the file and annotation."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox
    ):
        raise UserError(f"{path}: annotation {ann_id} has no bbox [x, y, width, height] (got {bbox!r})")
    return bbox


def _categories(data: dict, path: Path) -> tuple[tuple[int, ...], tuple[str, ...]]:
    by_id: dict[int, str] = {}
    names: set[str] = set()
    for cat in list_of_objects(data, "categories", path):
        cid = int_id(cat.get("id"), "a category id", path)
        name = cat.get("name")
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"{path}: category {cid} has no name")
        if cid in by_id:
            raise UserError(f"{path}: category id {cid} is listed twice")
        if name in names:
            raise UserError(f"{path}: category name '{name}' is used by two categories")
        by_id[cid] = name
        names.add(name)
    if not by_id:
        raise UserError(f"{path}: lists no categories")
    ids = tuple(sorted(by_id))
    return ids, tuple(by_id[i] for i in ids)


def _size(image: dict, key: str, image_id: int, path: Path) -> int:
    v = image.get(key)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise UserError(f"{path}: image {image_id} has no positive integer '{key}' (got {v!r})")
    return v


def _images(data: dict, path: Path):
    images = list_of_objects(data, "images", path)
    index: dict[int, int] = {}
    widths, heights, names = [], [], []
    for i, image in enumerate(images):
        image_id = int_id(image.get("id"), f"images[{i}].id", path)
        if image_id in index:
            raise UserError(f"{path}: image id {image_id} is listed twice")
        index[image_id] = i
        name = image.get("file_name")
        if not isinstance(name, str) or not name:
            raise UserError(f"{path}: image {image_id} has no file_name")
        names.append(name)
        widths.append(_size(image, "width", image_id, path))
        heights.append(_size(image, "height", image_id, path))
    return index, np.asarray(widths, dtype=np.int64), np.asarray(heights, dtype=np.int64), names


def parse_coco(data: dict, path: str | Path) -> CocoAnnotations:
    """Check a parsed COCO file (``path`` only names it in messages) and convert it (module docstring)."""
    path = Path(path)
    cat_ids, cat_names = _categories(data, path)
    label_of = {c: i + 1 for i, c in enumerate(cat_ids)}
    index, widths, heights, names = _images(data, path)
    anns = list_of_objects(data, "annotations", path)

    n = len(anns)
    image_idx = np.empty(n, dtype=np.int64)
    labels = np.empty(n, dtype=np.int64)
    crowd = np.empty(n, dtype=bool)
    xywh = np.empty((n, 4), dtype=np.float64)
    ann_ids: list = [None] * n
    for k, ann in enumerate(anns):
        ann_id = ann.get("id", f"#{k}")  # annotations[k] when it has no id
        ann_ids[k] = ann_id
        try:
            image_idx[k] = index[ann["image_id"]]
        except KeyError:
            raise UserError(
                f"{path}: annotation {ann_id} refers to image {ann.get('image_id')!r}, which is not in 'images'"
            ) from None
        except TypeError:
            raise UserError(f"{path}: annotation {ann_id} has an invalid image_id {ann.get('image_id')!r}") from None
        try:
            labels[k] = label_of[ann["category_id"]]
        except (KeyError, TypeError):
            raise UserError(
                f"{path}: annotation {ann_id} has category_id {ann.get('category_id')!r}, which is not in 'categories'"
            ) from None
        xywh[k] = bbox_of(ann, ann_id, path)
        c = ann.get("iscrowd", 0)
        if c not in (0, 1):  # True/False compare equal to 1/0
            raise UserError(f"{path}: annotation {ann_id} has iscrowd {c!r}, expected 0 or 1")
        crowd[k] = bool(c)

    boxes, keep, clipped = _clean_boxes(xywh, widths[image_idx], heights[image_idx])
    bad = BadBoxes(total=n, dropped=int((~keep).sum()), clipped=int(clipped.sum()))
    bad.dropped_ids = [ann_ids[i] for i in np.flatnonzero(~keep)[:_REPORT_IDS]]
    bad.clipped_ids = [ann_ids[i] for i in np.flatnonzero(clipped)[:_REPORT_IDS]]

    # kept annotations grouped by image, file order kept within an image
    kept = np.flatnonzero(keep)
    order = kept[np.argsort(image_idx[kept], kind="stable")]
    counts = np.bincount(image_idx[order], minlength=len(names))
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    image_ids = np.empty(len(names), dtype=np.int64)
    image_ids[list(index.values())] = list(index.keys())
    return CocoAnnotations(
        category_ids=cat_ids, category_names=cat_names, image_ids=image_ids, widths=widths, heights=heights,
        file_names=names, offsets=offsets, boxes=boxes[order].astype(np.float32), labels=labels[order],
        crowd=crowd[order], bad=bad,
    )  # fmt: skip


def _clean_boxes(xywh: np.ndarray, width: np.ndarray, height: np.ndarray):
    """COCO boxes (K, 4) of images of the given sizes -> (xyxy clipped to the image (K, 4), keep (K,),
    clipped beyond the tolerance (K,)) following the module docstring's rules."""
    x1, y1 = xywh[:, 0], xywh[:, 1]
    x2, y2 = x1 + xywh[:, 2], y1 + xywh[:, 3]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(xywh).all(axis=1) & (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
        over = np.maximum.reduce([-x1, -y1, x2 - width, y2 - height])  # (K,) worst overshoot in px
    clip = np.stack([np.clip(x1, 0, width), np.clip(y1, 0, height), np.clip(x2, 0, width), np.clip(y2, 0, height)], 1)
    keep = ok & (clip[:, 2] > clip[:, 0]) & (clip[:, 3] > clip[:, 1])
    return np.where(keep[:, None], clip, 0.0), keep, keep & (over > CLIP_TOLERANCE)


# --- writing ------------------------------------------------------------------------------------------------


def coco_image_ids(records: Sequence[dict]) -> list[int]:
    """The COCO image id of each record: its ``image_id`` (COCO records), else its position + 1."""
    return [int(r["image_id"]) if "image_id" in r else i + 1 for i, r in enumerate(records)]


def records_to_coco(
    records: Sequence[dict], classes: Sequence[str], category_ids: Sequence[int] | None = None,
    images_dir: str | Path | None = None,
) -> dict:
    """A COCO annotation dict of ``records`` (the inverse of :meth:`CocoAnnotations.records`).

    ``category_ids`` default to 1..C. Difficult and crowd objects become ``iscrowd=1`` (the ignore regions of
    COCO evaluation, as difficult objects are ignored by VOC's); ``area`` is the box area, and the
    segmentation the box's polygon. ``file_name`` is the image path relative to ``images_dir`` (default:
    its name).
    """
    category_ids = list(range(1, len(classes) + 1)) if category_ids is None else [int(c) for c in category_ids]
    if len(category_ids) != len(classes):
        raise ValueError(f"{len(classes)} classes but {len(category_ids)} category ids")
    images, annotations = [], []
    for image_id, r in zip(coco_image_ids(records), records):
        image = Path(r["image"])
        name = image.relative_to(images_dir).as_posix() if images_dir is not None else image.name
        images.append({"id": image_id, "file_name": name, "width": int(r["width"]), "height": int(r["height"])})
        boxes = np.asarray(r["boxes"], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(r["labels"], dtype=np.int64).reshape(-1)
        ignore = np.asarray(r["difficult"], dtype=bool).reshape(-1) | np.asarray(r.get("crowd", False), dtype=bool)
        ignore = np.broadcast_to(ignore, labels.shape)
        for (x1, y1, x2, y2), label, crowd in zip(boxes.tolist(), labels.tolist(), ignore.tolist()):
            w, h = x2 - x1, y2 - y1
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[label - 1],
                "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": int(crowd),
                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
            })  # fmt: skip
    categories = [{"id": c, "name": n, "supercategory": "none"} for c, n in zip(category_ids, classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco_json(path: str | Path, data: dict) -> None:
    """Write a COCO dict compactly, atomically (no NaN: strict JSON)."""
    atomic_write_text(path, json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n")
