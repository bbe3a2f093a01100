"""What a dataset holds, counted before training (``fpn inspect``).

Per split: images, those without objects, objects per class (difficult and crowd ones apart), box sizes
``sqrt(w * h)`` at the network's input (after the configured resize) against the anchor sizes, the pyramid level
each box goes to (RoI level rule, and the RPN anchor level whose size is nearest), the boxes a reader drops, clips
or refuses and why; across splits: images with identical bytes.

Speed: everything comes from the records (:mod:`fpn.data.records`, cached), never from decoding images. The
duplicate search stats every image file and reads only files whose byte size equals another's
(:func:`duplicate_groups`), so 118k COCO images cost seconds, not a pass over 18 GB.

A VOC folder with a bad box does not load (the VOC reader refuses the file, so ``fpn train`` stops at the first);
then the split is scanned file by file (:func:`scan_voc_set`) to list every bad box with its reason, and counted as
the COCO reader would read it (boxes not inside the image or without positive size dropped, others clipped).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fpn.data.records import CocoSplit, ImageSet, load_records, read_image_list
from fpn.data.voc import parse_voc_xml
from fpn.errors import DataWarning, UserError

ROI_LEVELS = (2, 3, 4, 5)  # the levels RoIs are pooled from (fpn.model.level_mapper)
ANCHOR_LEVELS = (2, 3, 4, 5, 6)  # one anchor size per level P2..P6 (model.anchor_sizes)
MIN_OBJECTS = 10  # a class with fewer training objects than this is warned about
EXAMPLES = 5  # bad boxes named per split
HEAD_BYTES = 4096  # duplicate search: bytes hashed of files sharing a size, before hashing them whole
PERCENTILES = (0, 5, 50, 95, 100)

# why a box is bad: the reasons of the VOC reader's refusals and the COCO reader's drops and clips
INVERTED = "no positive width and height"
OUTSIDE = "not inside the image"
CROSSES = "reaching outside the image"
UNKNOWN_CLASS = "unknown class"
NO_BNDBOX = "no <bndbox>"
NOT_A_NUMBER = "a coordinate is not a number"
BAD_FILE = "annotation file unreadable"
NO_IMAGE = "image file missing"


@dataclass(frozen=True)
class Geometry:
    """How the network sees a box: each split's resize (shorter side ``scale``, longer side at most
    ``max_size``, rounded as ``data.resize`` does), the anchor sizes of P2..P6, the RPN's foreground IoU, and the
    RoI level rule ``floor(k0 + log2(size / s0))`` clamped to P2..P5."""

    train_scale: int = 600
    train_max_size: int = 1000
    test_scale: int = 600
    test_max_size: int = 1000
    resize: str = "fast"
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    rpn_fg_iou: float = 0.7
    canonical_size: float = 224.0
    canonical_level: int = 4
    use_difficult: bool = False

    @classmethod
    def from_config(cls, cfg) -> Geometry:
        d, m = cfg.data, cfg.model
        scales = sorted(d.train_scales)
        return cls(
            train_scale=int(scales[len(scales) // 2]), train_max_size=int(d.max_size), test_scale=int(d.test_scale),
            test_max_size=int(d.test_size_limit()), resize=d.resize, anchor_sizes=tuple(int(a) for a in m.anchor_sizes),
            rpn_fg_iou=float(m.rpn_fg_iou), canonical_size=float(m.roi_canonical_size),
            canonical_level=int(m.roi_canonical_level), use_difficult=bool(d.use_difficult),
        )  # fmt: skip

    def resize_for(self, role: str) -> tuple[int, int]:
        return (self.train_scale, self.train_max_size) if role == "train" else (self.test_scale, self.test_max_size)

    @property
    def reach(self) -> tuple[float, float]:
        """Sizes between which some anchor can reach the RPN's foreground IoU with a box of its shape: a box of size
        s centred on an anchor of size a >= s overlaps it with IoU (s / a)^2."""
        root = math.sqrt(self.rpn_fg_iou)
        return self.anchor_sizes[0] * root, self.anchor_sizes[-1] / root


def resize_factors(widths: np.ndarray, heights: np.ndarray, scale: int, max_size: int, resize: str = "fast"):
    """Per image, the factor of :func:`fpn.data.transforms.resize_factor` (vectorised)."""
    w, h = np.asarray(widths, np.float64), np.asarray(heights, np.float64)
    short, long = np.minimum(w, h), np.maximum(w, h)
    if resize == "torchvision":
        return np.minimum(scale / short, max_size / long)
    f = scale / short
    # "fast" judges the longer side after rounding, as the loader does; np.round and Python's round both round
    # halves to even
    return np.where(np.round(f * long) > max_size, max_size / long, f)


def roi_levels(sizes: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The level a RoI of each size is pooled from (fpn.model.level_mapper, eps inside the log)."""
    with np.errstate(divide="ignore"):
        k = np.floor(geometry.canonical_level + np.log2(sizes / geometry.canonical_size + 1e-6))
    return np.clip(k, ROI_LEVELS[0], ROI_LEVELS[-1]).astype(np.int64)


def anchor_levels(sizes: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The level whose anchor size is nearest each size (in log scale: the best IoU for a box of an anchor's shape)."""
    anchors = np.log2(np.asarray(geometry.anchor_sizes, np.float64))
    with np.errstate(divide="ignore"):
        d = np.abs(np.log2(np.maximum(sizes, 1e-6))[:, None] - anchors[None, :])
    return np.asarray(ANCHOR_LEVELS)[np.argmin(d, axis=1)] if len(sizes) else np.zeros(0, np.int64)


# --- bad boxes ---------------------------------------------------------------------------------------------


@dataclass
class BadReport:
    """A split's bad boxes: count per reason, the first few named, the reader's own warnings, and what the
    reader does with them (``handling``)."""

    reasons: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)
    reader_warnings: list = field(default_factory=list)
    handling: str = ""
    files: int = 0  # files or images with at least one

    def add(self, reason: str, example: str, count: int = 1) -> None:
        self.reasons[reason] += count
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)

    def as_dict(self) -> dict:
        return {"total": int(sum(self.reasons.values())), "files": self.files, "reasons": dict(self.reasons),
                "handling": self.handling, "examples": self.examples, "reader_warnings": self.reader_warnings}  # fmt: skip


def scan_voc_set(image_set: ImageSet, classes: Sequence[str]) -> tuple[list[dict], BadReport]:
    """Every record of a VOC split, and every bad box with its reason. A file the VOC reader accepts gives its
    record; one it refuses is read again leniently: a box not inside the image or without positive size dropped,
    one reaching outside the image clipped, an object of an unknown class or without a box left out."""
    root = Path(image_set.root)
    ids, _ = read_image_list(image_set.list_file, image_set.split)
    jpeg, ann = root / "JPEGImages", root / "Annotations"
    try:
        present = set(os.listdir(jpeg))
    except OSError:
        present = set()
    class_to_label = {c.lower(): i + 1 for i, c in enumerate(classes)}
    report = BadReport(handling="refused by the VOC reader (fpn train stops at the first: fix or remove them); "
                                "counted here as dropped or clipped")  # fmt: skip
    records = []
    for image_id in ids:
        xml = ann / f"{image_id}.xml"
        if f"{image_id}.jpg" not in present:
            report.files += 1
            report.add(NO_IMAGE, f"{jpeg / (image_id + '.jpg')}: {NO_IMAGE}")
            continue
        try:
            records.append(parse_voc_xml(xml, class_to_label, jpeg / f"{image_id}.jpg"))
            continue
        except UserError as e:
            refusal = str(e)
        rec = _lenient_voc(xml, class_to_label, jpeg / f"{image_id}.jpg", report)
        report.files += 1
        if rec is None:
            report.add(BAD_FILE, refusal)
        else:
            records.append(rec)
    return records, report


def _lenient_voc(path: Path, class_to_label: dict, image: Path, report: BadReport) -> dict | None:
    """A record of a VOC file the reader refused, its bad objects left out or clipped and added to ``report``;
    None when the file itself is unreadable (no XML, no size)."""
    try:
        root = ET.parse(path).getroot()
        size = root.find("size")
        width, height = int(float(size.find("width").text)), int(float(size.find("height").text))
    except (OSError, ET.ParseError, AttributeError, TypeError, ValueError):
        return None
    if width <= 0 or height <= 0:
        return None
    boxes, labels, difficult, truncated = [], [], [], []
    for i, obj in enumerate(root.iter("object"), 1):
        name = (obj.findtext("name") or "").strip().lower()
        where = f"{path}: object {i} ({name})"
        if name not in class_to_label:
            report.add(UNKNOWN_CLASS, f"{where}: {UNKNOWN_CLASS}")
            continue
        bb = obj.find("bndbox")
        if bb is None:
            report.add(NO_BNDBOX, f"{where}: {NO_BNDBOX}")
            continue
        try:
            x1, y1, x2, y2 = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            report.add(NOT_A_NUMBER, f"{where}: {NOT_A_NUMBER}")
            continue
        text = f"{where} box ({x1:g},{y1:g},{x2:g},{y2:g}) in a {width}x{height} image"
        # the VOC reader's rules (1-based inclusive pixels), then the box in continuous coordinates
        if not all(map(math.isfinite, (x1, y1, x2, y2))) or x2 < x1 or y2 < y1:
            report.add(INVERTED, f"{text}: {INVERTED}")
            continue
        box = [x1 - 1, y1 - 1, x2, y2]
        clipped = [min(max(box[0], 0), width), min(max(box[1], 0), height),
                   min(max(box[2], 0), width), min(max(box[3], 0), height)]  # fmt: skip
        if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
            report.add(OUTSIDE, f"{text}: {OUTSIDE}")
            continue
        if x1 < 1 or y1 < 1 or x2 > width or y2 > height:
            report.add(CROSSES, f"{text}: {CROSSES}")
            box = clipped
        boxes.append(box)
        labels.append(class_to_label[name])
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
        truncated.append((obj.findtext("truncated") or "0").strip() == "1")
    return {"id": path.stem, "image": str(image), "width": width, "height": height,
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64),
            "difficult": np.asarray(difficult, bool), "truncated": np.asarray(truncated, bool)}  # fmt: skip


def _coco_bad_boxes(split: CocoSplit, report: BadReport) -> None:
    """The COCO reader's drop and clip counts, from the split's cache (written by the load just before)."""
    from fpn.data import records as R

    _, coco = R._read_coco_cache(R._coco_cache_files(split, None), R._coco_signature(split), header_only=False)
    if coco is None:  # no writable cache folder: the reader's warning line says it
        return
    bad = coco.bad
    if bad.dropped:
        report.add(f"{INVERTED}, or {OUTSIDE}", f"{split.json}: annotation ids {_ids(bad.dropped_ids, bad.dropped)} "
                   "dropped", bad.dropped)  # fmt: skip
    if bad.clipped:
        report.add(CROSSES, f"{split.json}: annotation ids {_ids(bad.clipped_ids, bad.clipped)} clipped", bad.clipped)


def _ids(ids: list, count: int) -> str:
    return ", ".join(str(i) for i in ids) + (", ..." if count > len(ids) else "")


def load_split(sets: Sequence, classes: Sequence[str], category_ids: Sequence[int] | None) -> tuple[list, BadReport]:
    """Records of one role's splits through the readers (cached), and their bad boxes. Any reader works (the
    records are the same for every format); its warnings are kept. A VOC split the reader refuses is scanned."""
    records: list[dict] = []
    report = BadReport()
    for s in sets:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            try:
                records += load_records([s], classes, category_ids=category_ids)
                refused = None
            except UserError as e:
                if not isinstance(s, ImageSet):
                    raise
                refused = e
        said = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
        for w in caught:
            if not issubclass(w.category, DataWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        report.reader_warnings += said
        if isinstance(s, ImageSet) and (refused is not None or said):
            voc_records, voc_report = scan_voc_set(s, classes)
            if refused is None:  # the reader read it (and warned): its records stand, the scan only says why
                voc_report.handling = "as the reader's warning says"
            else:
                records += voc_records
            report.reasons += voc_report.reasons
            report.examples = (report.examples + voc_report.examples)[:EXAMPLES]
            report.files += voc_report.files
            report.handling = voc_report.handling
        elif isinstance(s, CocoSplit):
            _coco_bad_boxes(s, report)
            if report.reasons:
                report.handling = "dropped or clipped by the COCO reader (one warning line at the start of a run)"
    return records, report


# --- counts and sizes --------------------------------------------------------------------------------------


@dataclass
class SplitObjects:
    """A split's objects (neither crowd nor, unless trained, difficult) in columns: the class label and size at
    the network's input of each; what the size plot draws."""

    labels: np.ndarray  # int64 (K,) 1..C
    sizes: np.ndarray  # float64 (K,) sqrt(w * h) in input pixels


def _columns(records: list[dict]):
    """(image index, boxes, labels, difficult, crowd) of every annotation, and each image's width and height."""
    n = len(records)
    counts = np.fromiter((len(r["labels"]) for r in records), np.int64, n)
    some = [r for r in records if len(r["labels"])]
    if some:  # the readers' arrays as they are (K, 4) and (K,): one concatenate each, no per-record reshaping
        boxes = np.concatenate([r["boxes"] for r in some], dtype=np.float64).reshape(-1, 4)
        labels = np.concatenate([r["labels"] for r in some], dtype=np.int64)
        difficult = np.concatenate([r["difficult"] for r in some], dtype=bool)
        crowd = np.concatenate([r.get("crowd", np.zeros(len(r["labels"]), bool)) for r in some], dtype=bool)
    else:
        boxes, labels = np.zeros((0, 4)), np.zeros(0, np.int64)
        difficult = crowd = np.zeros(0, bool)
    widths = np.fromiter((r["width"] for r in records), np.int64, n)
    heights = np.fromiter((r["height"] for r in records), np.int64, n)
    return np.repeat(np.arange(n), counts), boxes, labels, difficult, crowd, widths, heights


def summarize_split(role: str, names: list[str], records: list[dict], classes: Sequence[str], geometry: Geometry,
                    bad: BadReport) -> tuple[dict, SplitObjects]:  # fmt: skip
    """The JSON-ready counts of one role's records (module docstring) and its objects' sizes."""
    C = len(classes)
    image, boxes, labels, difficult, crowd, widths, heights = _columns(records)
    difficult = difficult & ~crowd
    trained = ~crowd & (geometry.use_difficult | ~difficult)
    scale, max_size = geometry.resize_for(role)
    factors = resize_factors(widths, heights, scale, max_size, geometry.resize) if len(records) else np.zeros(0)
    wh = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None)
    sizes = np.sqrt(wh[:, 0] * wh[:, 1]) * factors[image] if len(image) else np.zeros(0)
    t_labels, t_sizes = labels[trained], sizes[trained]
    roi, anchor = roi_levels(t_sizes, geometry), anchor_levels(t_sizes, geometry)
    low, high = geometry.reach

    def per_class(values: np.ndarray) -> list[int]:
        return np.bincount(values, minlength=C + 1)[1:].tolist()

    def levels_per_class(levels: np.ndarray, names: tuple[int, ...]) -> np.ndarray:
        n = len(names)
        return np.bincount(t_labels * n + levels - names[0], minlength=(C + 1) * n).reshape(C + 1, n)[1:]

    with_objects = np.zeros(len(records), bool)
    with_objects[image[trained]] = True
    has_class = np.zeros((len(records), C + 1), bool)  # (image, class) pairs; np.unique takes seconds on 860k
    has_class[image[trained], t_labels] = True
    images_per_class = has_class.sum(axis=0)[1:].tolist()
    difficult_per_class, crowd_per_class = per_class(labels[difficult]), per_class(labels[crowd])
    below, above = per_class(t_labels[t_sizes < low]), per_class(t_labels[t_sizes > high])
    roi_per_class, anchor_per_class = levels_per_class(roi, ROI_LEVELS), levels_per_class(anchor, ANCHOR_LEVELS)
    order = np.argsort(t_labels, kind="stable")
    by_class = np.split(t_sizes[order], np.cumsum(np.bincount(t_labels, minlength=C + 1))[:-1])[1:]
    class_rows = []
    for c, name in enumerate(classes):
        class_rows.append({
            "class": name, "objects": len(by_class[c]), "images": images_per_class[c],
            "difficult": difficult_per_class[c], "crowd": crowd_per_class[c], "size": _percentiles(by_class[c]),
            "roi_level": {f"P{k}": int(v) for k, v in zip(ROI_LEVELS, roi_per_class[c])},
            "anchor_level": {f"P{k}": int(v) for k, v in zip(ANCHOR_LEVELS, anchor_per_class[c])},
            "below_anchor_reach": below[c], "above_anchor_reach": above[c],
        })  # fmt: skip
    summary = {
        "role": role, "splits": names, "images": len(records), "images_without_objects": int((~with_objects).sum()),
        "images_without_annotations": int(len(records) - np.count_nonzero(np.bincount(image, minlength=1))),
        "objects": int(trained.sum()), "difficult": int(difficult.sum()), "crowd": int(crowd.sum()),
        "difficult_trained": geometry.use_difficult,
        "input_resize": {"scale": scale, "max_size": max_size, "rule": geometry.resize},
        "image_size": {"width": _percentiles(widths, (0, 50, 100)), "height": _percentiles(heights, (0, 50, 100))},
        "size": _percentiles(t_sizes),
        "roi_level": _level_counts(roi, ROI_LEVELS), "anchor_level": _level_counts(anchor, ANCHOR_LEVELS),
        "below_anchor_reach": int((t_sizes < low).sum()), "above_anchor_reach": int((t_sizes > high).sum()),
        "classes": class_rows, "bad_boxes": bad.as_dict(),
    }  # fmt: skip
    return summary, SplitObjects(t_labels, t_sizes)


def _percentiles(values: np.ndarray, which=PERCENTILES) -> dict:
    if not len(values):
        return {}
    return {f"p{q}" if q not in (0, 100) else ("min" if q == 0 else "max"): round(float(v), 1)
            for q, v in zip(which, np.percentile(values, which))}  # fmt: skip


def _level_counts(levels: np.ndarray, names: tuple[int, ...]) -> dict:
    counts = np.bincount(levels, minlength=names[-1] + 1)
    return {f"P{k}": int(counts[k]) for k in names}


# --- duplicates --------------------------------------------------------------------------------------------


def duplicate_groups(paths: Sequence[str]) -> tuple[list[list[int]], int]:
    """Groups of indices of ``paths`` whose files hold the same bytes (a path listed twice included), and how
    many files were read. Only files sharing a byte size with another are read: their first HEAD_BYTES hashed,
    then the whole file where that matches too, so a dataset of distinct images costs one stat per file."""
    by_path: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        by_path.setdefault(os.path.abspath(p), []).append(i)  # not realpath: a stat per path component
    by_size: dict[int, list[str]] = {}
    for p in by_path:
        try:
            by_size.setdefault(os.stat(p).st_size, []).append(p)
        except OSError:
            continue  # a missing image: the readers say so
    read = 0
    groups = [idx for idx in by_path.values() if len(idx) > 1]  # one file listed several times
    same_size = [ps for ps in by_size.values() if len(ps) > 1]
    for n_bytes in (HEAD_BYTES, None):
        next_round = []
        for ps in same_size:
            by_hash: dict[bytes, list[str]] = {}
            for p in ps:
                by_hash.setdefault(_hash(p, n_bytes), []).append(p)
                read += n_bytes is None
            next_round += [g for g in by_hash.values() if len(g) > 1]
        same_size = next_round
    for ps in same_size:
        groups.append(sorted(i for p in ps for i in by_path[p]))
    # a file listed twice inside a group of equal files: one group
    merged: dict[int, set] = {}
    for g in groups:
        s = set(g).union(*(merged.get(i, set()) for i in g))
        for i in s:
            merged[i] = s
    unique = {id(s): sorted(s) for s in merged.values()}
    return sorted(unique.values()), read


def _hash(path: str, n_bytes: int | None) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            if n_bytes is not None:
                h.update(f.read(n_bytes))
            else:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    except OSError:
        return path.encode()  # unreadable: equal to nothing else
    return h.digest()


# --- the whole dataset -------------------------------------------------------------------------------------


@dataclass
class Inspection:
    """``summary``: JSON-ready; ``records`` and ``objects`` per role, for the pictures."""

    summary: dict
    records: dict = field(default_factory=dict)
    objects: dict = field(default_factory=dict)


def inspect_dataset(spec, geometry: Geometry, roles: Sequence[str] = ("train", "test"),
                    duplicates: bool = True) -> Inspection:  # fmt: skip
    """Count a resolved dataset (a :class:`fpn.data.catalog.DatasetSpec`): each of ``roles`` that the dataset has,
    duplicates across them, and the warnings. Of several roles, one whose VOC list file is missing (a folder with a
    trainval.txt only) is left out with a note; a single one asked for must be there."""
    classes = tuple(spec.classes)
    out = Inspection(summary={
        "dataset": spec.name, "layout": spec.layout, "classes": list(classes),
        "geometry": {"anchor_sizes": list(geometry.anchor_sizes), "rpn_fg_iou": geometry.rpn_fg_iou,
                     "anchor_reach": [round(v, 1) for v in geometry.reach], "roi_canonical_size": geometry.canonical_size,
                     "roi_canonical_level": geometry.canonical_level},
        "splits": {}, "notes": [],
    })  # fmt: skip
    for role in roles:
        sets = spec.train_sets if role == "train" else spec.test_sets
        missing = [s for s in sets if isinstance(s, ImageSet) and not s.list_file.is_file()]
        if len(roles) > 1 and (missing or not sets):
            what = f"{missing[0].list_file} not found" if missing else "the dataset defines none"
            out.summary["notes"].append(f"no {role} split ({what})")
            continue
        records, bad = load_split(sets, classes, spec.category_ids or None)
        names = [s.split for s in sets]
        out.summary["splits"][role], out.objects[role] = summarize_split(role, names, records, classes, geometry, bad)
        out.records[role] = records
    if not out.records:
        raise UserError(f"dataset {spec.name} has no {' or '.join(roles)} split")
    out.summary["duplicates"] = _duplicates(out.records) if duplicates else None
    out.summary["warnings"] = problems(out.summary)
    return out


def _duplicates(records: dict) -> dict:
    where = [(role, r["id"], r["image"]) for role, rs in records.items() for r in rs]
    groups, read = duplicate_groups([w[2] for w in where])
    return {
        "groups": [[{"split": where[i][0], "id": where[i][1], "image": where[i][2]} for i in g] for g in groups],
        "images": int(sum(len(g) for g in groups)), "files_read_whole": read,
    }  # fmt: skip


def problems(summary: dict) -> list[str]:
    """What deserves a look before training, one line each."""
    out = []
    geo = summary["geometry"]
    low, high = geo["anchor_reach"]
    anchors = geo["anchor_sizes"]
    for role, s in summary["splits"].items():
        bad = s["bad_boxes"]
        if bad["total"]:
            why = ", ".join(f"{n} {reason}" for reason, n in bad["reasons"].items())
            out.append(f"{role}: {bad['total']} bad boxes or files ({why}): {bad['handling']}; first: {bad['examples'][0]}")
        if s["images"] and s["images_without_objects"] * 2 > s["images"]:
            out.append(f"{role}: {s['images_without_objects']} of {s['images']} images have no objects to train on")
        if role == "train":
            few = [f"{c['class']} {c['objects']}" for c in s["classes"] if c["objects"] < MIN_OBJECTS]
            if few:
                out.append(f"train: {len(few)} classes have fewer than {MIN_OBJECTS} objects to learn from ({', '.join(few[:10])}"
                           f"{', ...' if len(few) > 10 else ''})")  # fmt: skip
        else:
            none = [c["class"] for c in s["classes"] if c["objects"] == 0]
            if none:
                out.append(f"{role}: {len(none)} classes have no objects, so no AP ({', '.join(none[:10])}"
                           f"{', ...' if len(none) > 10 else ''})")  # fmt: skip
        n = s["objects"]
        if n and s["below_anchor_reach"]:
            out.append(
                f"{role}: {s['below_anchor_reach']} of {n} boxes ({100 * s['below_anchor_reach'] / n:.1f}%) are smaller "
                f"than {low:g} px at the input, where no anchor (smallest {anchors[0]} px) reaches IoU {geo['rpn_fg_iou']:g} "
                f"with them (the RPN then only trains each one's best anchor); smaller model.anchor_sizes or a larger "
                f"{'data.train_scales' if role == 'train' else 'data.test_scale'} help")  # fmt: skip
        if n and s["above_anchor_reach"]:
            out.append(f"{role}: {s['above_anchor_reach']} of {n} boxes are larger than {high:g} px at the input, beyond "
                       f"the largest anchor ({anchors[-1]} px)")  # fmt: skip
    dup = summary.get("duplicates")
    if dup and dup["groups"]:
        across = [g for g in dup["groups"] if len({m["split"] for m in g}) > 1]
        within = len(dup["groups"]) - len(across)
        if across:
            m = across[0]
            out.append(f"{len(across)} image(s) of one split are also in another (same bytes), e.g. "
                       f"{m[0]['split']} {m[0]['id']} = {m[1]['split']} {m[1]['id']}: the test score overstates")  # fmt: skip
        if within:
            m = next(g for g in dup["groups"] if len({x["split"] for x in g}) == 1)
            out.append(f"{within} group(s) of identical images within a split, e.g. {m[0]['split']} "
                       f"{' = '.join(x['id'] for x in m[:3])}")  # fmt: skip
    return out


# --- text --------------------------------------------------------------------------------------------------


def format_summary(summary: dict) -> str:
    """The readable summary ``fpn inspect`` prints."""
    geo = summary["geometry"]
    lines = [f"dataset {summary['dataset']}: {len(summary['classes'])} classes"
             + (f"; {summary['layout']}" if summary["layout"] else "")]  # fmt: skip
    anchors = " ".join(f"P{k} {a}" for k, a in zip(ANCHOR_LEVELS, geo["anchor_sizes"]))
    lines.append(f"anchors {anchors} px (an IoU of {geo['rpn_fg_iou']:g} reaches boxes of {geo['anchor_reach'][0]:g} to "
                 f"{geo['anchor_reach'][1]:g} px); RoI level floor({geo['roi_canonical_level']} + log2(size / "
                 f"{geo['roi_canonical_size']:g})) in P2..P5; sizes are sqrt(w * h) at the network's input")  # fmt: skip
    for role, s in summary["splits"].items():
        lines.append("")
        lines.extend(_format_split(role, s))
    dup = summary.get("duplicates")
    lines.append("")
    if dup is None:
        lines.append("duplicates: not searched (--no-duplicates)")
    elif not dup["groups"]:
        lines.append(f"duplicates: none ({dup['files_read_whole']} files read whole)")
    else:
        lines.append(f"duplicates: {len(dup['groups'])} groups of identical images ({dup['images']} images):")
        for g in dup["groups"][:EXAMPLES]:
            lines.append("  " + " = ".join(f"{m['split']} {m['id']}" for m in g))
        if len(dup["groups"]) > EXAMPLES:
            lines.append(f"  ... ({len(dup['groups']) - EXAMPLES} more in the JSON)")
    lines.extend(f"note: {n}" for n in summary.get("notes", []))
    lines.extend(f"warning: {w}" for w in summary["warnings"])
    return "\n".join(lines)


def _format_split(role: str, s: dict) -> list[str]:
    r = s["input_resize"]
    difficult = "trained" if s["difficult_trained"] else "left out"
    ws, hs = s["image_size"].get("width", {}), s["image_size"].get("height", {})
    lines = [(
        f"{role} ({' + '.join(s['splits'])}): {s['images']} images ({s['images_without_objects']} without objects), "
        f"{s['objects']} objects; {s['difficult']} difficult ({difficult}), {s['crowd']} crowd regions (ignored)"
    )]
    if ws:
        lines.append(f"  image sizes {ws['min']:g}..{ws['max']:g} x {hs['min']:g}..{hs['max']:g} px (median "
                     f"{ws['p50']:g} x {hs['p50']:g}); resized to shorter side {r['scale']}, longer at most {r['max_size']}")  # fmt: skip
    w = max(6, 1 + len(str(max([*s["roi_level"].values(), *s["anchor_level"].values(), 0]))))  # level columns
    lines.append(f"  {'':<41}{'size at input (px)':^35}  {'RoI level':^{4 * w}}  {'best anchor':^{5 * w}}".rstrip())
    lines.append(f"  {'class':<12} {'objects':>7} {'images':>6} {'diff':>5} {'crowd':>5} "
                 + "".join(f"{k:>7}" for k in ("min", "p5", "median", "p95", "max")) + "  "
                 + "".join(f"{'P' + str(k):>{w}}" for k in ROI_LEVELS) + "  "
                 + "".join(f"{'P' + str(k):>{w}}" for k in ANCHOR_LEVELS))  # fmt: skip
    total = {"class": "(all)", "objects": s["objects"], "images": s["images"] - s["images_without_objects"],
             "difficult": s["difficult"], "crowd": s["crowd"], "size": s["size"], "roi_level": s["roi_level"],
             "anchor_level": s["anchor_level"]}  # fmt: skip
    for c in [*s["classes"], total]:
        z = c["size"]
        size = "".join(f"{z[k]:>7.1f}" if k in z else f"{'-':>7}" for k in ("min", "p5", "p50", "p95", "max"))
        roi = "".join(f"{v:>{w}}" for v in c["roi_level"].values())
        anchor = "".join(f"{v:>{w}}" for v in c["anchor_level"].values())
        lines.append(f"  {c['class'][:12]:<12} {c['objects']:>7} {c['images']:>6} {c['difficult']:>5} {c['crowd']:>5} "
                     f"{size}  {roi}  {anchor}")  # fmt: skip
    bad = s["bad_boxes"]
    if bad["total"]:
        lines.append(f"  bad boxes: {bad['total']} ({', '.join(f'{n} {k}' for k, n in bad['reasons'].items())}); "
                     f"{bad['handling']}")  # fmt: skip
        lines.extend(f"    {e}" for e in bad["examples"])
    else:
        lines.append("  bad boxes: none")
    if not bad["reasons"]:  # else they say what the reasons say
        lines.extend(f"  the reader said: {w}" for w in bad["reader_warnings"])
    return lines
