"""Detections written as labels that labelling tools import (CVAT, Label Studio, Roboflow, labelImg), so a model
pre-labels the next batch: COCO JSON, PASCAL VOC XML, YOLO txt. Every file is written atomically.

A :class:`LabelWriter` of one format takes one image at a time (:meth:`LabelWriter.add`: its file name, size and
detections as continuous pixel xyxy boxes with 1-based labels, as fpn's records and predictions are) and writes
into its folder:

- ``coco``: ``annotations.json`` (at :meth:`LabelWriter.close`): ``images`` (id from 1, ``file_name``, width,
  height), ``categories`` (the dataset's category ids when given, else 1..C) and ``annotations`` (``bbox`` [x, y,
  w, h] in pixels rounded to 0.01, ``area``, ``iscrowd`` 0, the box's polygon as ``segmentation``, and the
  ``score``);
- ``voc``: ``Annotations/<stem>.xml`` per image (1-based inclusive integer pixels, as the devkit writes them: boxes
  move by at most 0.5 px; the score in a ``<score>`` element of each ``<object>``, which readers ignore), a list
  file ``ImageSets/Main/<split>.txt`` and ``classes.txt``: a VOC folder fpn reads once ``JPEGImages/`` holds the
  images;
- ``yolo``: ``labels/<stem>.txt`` per image (``class cx cy w h`` normalised, 6 decimals; a 6th score column only
  with ``scores_in_yolo``: Ultralytics writes it with ``--save-conf`` but its training, like most tools, expects 5
  columns), ``classes.txt`` and ``data.yaml`` (``train``/``val``: ``images``; ``names``): an Ultralytics dataset
  once ``images/`` holds the images.

:func:`write_yolo_dataset` writes records (a dataset's split) as a YOLO folder, images linked or copied.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from fpn.data.yolo import yolo_line
from fpn.io import atomic_write_text

LABEL_FORMATS = ("coco", "voc", "yolo")


def _yaml_quote(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"


def data_yaml(classes: Sequence[str], train: str = "images", val: str = "images") -> str:
    """An Ultralytics ``data.yaml`` (paths relative to the file's folder; names as an id mapping)."""
    names = "".join(f"  {i}: {_yaml_quote(c)}\n" for i, c in enumerate(classes))
    return f"# written by fpn\npath: .\ntrain: {train}\nval: {val}\nnc: {len(classes)}\nnames:\n{names}"


def voc_xml(file_name: str, width: int, height: int, boxes, labels, classes, scores=None,
            database: str = "fpn predictions") -> str:  # fmt: skip
    """A devkit-style annotation of detections: 1-based inclusive integer boxes (rounded, kept inside the image
    and at least one pixel wide), class names escaped, scores in ``<score>`` elements when given."""
    lines = [
        "<annotation>", "\t<folder>JPEGImages</folder>", f"\t<filename>{escape(file_name)}</filename>",
        f"\t<source>\n\t\t<database>{escape(database)}</database>\n\t</source>",
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>",
        "\t<segmented>0</segmented>",
    ]  # fmt: skip
    for k, ((x1, y1, x2, y2), label) in enumerate(zip(np.asarray(boxes, dtype=np.float64).tolist(), labels)):
        xmin, ymin = min(max(round(x1) + 1, 1), width), min(max(round(y1) + 1, 1), height)
        xmax, ymax = min(max(round(x2), xmin), width), min(max(round(y2), ymin), height)
        lines += [
            "\t<object>", f"\t\t<name>{escape(classes[int(label) - 1])}</name>", "\t\t<pose>Unspecified</pose>",
            "\t\t<truncated>0</truncated>", "\t\t<difficult>0</difficult>",
            *([f"\t\t<score>{float(scores[k]):.5f}</score>"] if scores is not None else []),
            (f"\t\t<bndbox>\n\t\t\t<xmin>{xmin}</xmin>\n\t\t\t<ymin>{ymin}</ymin>\n\t\t\t<xmax>{xmax}</xmax>\n"
             f"\t\t\t<ymax>{ymax}</ymax>\n\t\t</bndbox>"),
            "\t</object>",
        ]  # fmt: skip
    return "\n".join(lines + ["</annotation>"]) + "\n"


class LabelWriter:
    """Writes one format's label files into ``out`` (module docstring). ``category_ids``: the COCO ids of labels
    1..C (default 1..C); ``split``: the VOC list file's name (trainval: once corrected, the images train)."""

    def __init__(self, fmt: str, out: str | Path, classes: Sequence[str], category_ids: Sequence[int] | None = None,
                 scores_in_yolo: bool = False, split: str = "trainval"):  # fmt: skip
        if fmt not in LABEL_FORMATS:
            raise ValueError(f"label format must be one of {LABEL_FORMATS}, got {fmt!r}")
        self.fmt, self.out, self.classes = fmt, Path(out), tuple(classes)
        ids = list(range(1, len(self.classes) + 1)) if category_ids is None else [int(c) for c in category_ids]
        if len(ids) != len(self.classes):
            raise ValueError(f"{len(self.classes)} classes but {len(ids)} category ids")
        self.category_ids = ids
        self.scores_in_yolo, self.split = scores_in_yolo, split
        self.stems: list[str] = []
        self.coco: dict = {"images": [], "annotations": [],
                           "categories": [{"id": c, "name": n, "supercategory": "none"} for c, n in zip(ids, classes)]}

    def add(self, file_name: str, width: int, height: int, boxes, labels, scores=None, stem: str | None = None):
        """One image's detections: ``boxes`` (K, 4) continuous pixel xyxy, ``labels`` (K,) 1..C, ``scores`` (K,) or
        None. ``file_name`` is the image's name as the labelling tool will see it; ``stem`` (unique per writer,
        default the file name's stem) names its VOC/YOLO file."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        scores = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
        stem = stem or Path(file_name).stem
        self.stems.append(stem)
        if self.fmt == "yolo":
            lines = [yolo_line(b, lab, width, height, s if self.scores_in_yolo and scores is not None else None)
                     for b, lab, s in zip(boxes, labels, scores if scores is not None else [None] * len(labels))]
            atomic_write_text(self.out / "labels" / f"{stem}.txt", "".join(f"{line}\n" for line in lines))
        elif self.fmt == "voc":
            atomic_write_text(self.out / "Annotations" / f"{stem}.xml",
                              voc_xml(file_name, width, height, boxes, labels, self.classes, scores))
        else:
            image_id = len(self.coco["images"]) + 1
            self.coco["images"].append({"id": image_id, "file_name": file_name, "width": int(width),
                                        "height": int(height)})  # fmt: skip
            for k, ((x1, y1, x2, y2), label) in enumerate(zip(boxes.tolist(), labels.tolist())):
                x, y = round(x1, 2), round(y1, 2)  # corners rounded, then the size: x + w is x2 within 0.005
                w, h = round(round(x2, 2) - x, 2), round(round(y2, 2) - y, 2)
                ann = {"id": len(self.coco["annotations"]) + 1, "image_id": image_id,
                       "category_id": self.category_ids[label - 1], "bbox": [x, y, w, h], "area": round(w * h, 2),
                       "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}  # fmt: skip
                if scores is not None:
                    ann["score"] = round(float(scores[k]), 5)
                self.coco["annotations"].append(ann)

    def close(self) -> Path:
        """Write what is written once (COCO's file, the class lists, data.yaml, the VOC list); returns the main
        file or folder."""
        if self.fmt == "yolo":
            atomic_write_text(self.out / "classes.txt", "".join(f"{c}\n" for c in self.classes))
            atomic_write_text(self.out / "data.yaml", data_yaml(self.classes))
            return self.out / "labels"
        if self.fmt == "voc":
            atomic_write_text(self.out / "classes.txt", "".join(f"{c}\n" for c in self.classes))
            atomic_write_text(self.out / "ImageSets" / "Main" / f"{self.split}.txt",
                              "".join(f"{s}\n" for s in self.stems))  # fmt: skip
            return self.out / "Annotations"
        path = self.out / "annotations.json"
        atomic_write_text(path, json.dumps(self.coco, separators=(",", ":"), allow_nan=False) + "\n")
        return path


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)  # no second copy of a dataset's images where the file system allows
    except OSError:
        shutil.copy2(src, dst)


def write_yolo_dataset(out: str | Path, splits: dict[str, Sequence[dict]], classes: Sequence[str]) -> Path:
    """Records of a dataset (``{"train": records, "val": records}``, the records of :mod:`fpn.data.voc`) as an
    Ultralytics folder: ``images/<split>/`` (linked, or copied), ``labels/<split>/<id>.txt``, ``data.yaml``.
    Difficult and crowd flags are lost (YOLO has none); the objects are kept. Returns ``out``."""
    out = Path(out)
    for split, records in splits.items():
        for r in records:
            src = Path(r["image"])
            _link_or_copy(src, out / "images" / split / f"{r['id']}{src.suffix}")
            lines = [yolo_line(b, lab, r["width"], r["height"]) for b, lab in zip(r["boxes"], r["labels"])]
            atomic_write_text(out / "labels" / split / f"{r['id']}.txt", "".join(f"{line}\n" for line in lines))
    names = list(splits)
    atomic_write_text(out / "data.yaml", data_yaml(classes, f"images/{names[0]}", f"images/{names[-1]}"))
    return out
