"""COCO detection metrics (COCOeval, box IoU), beside the VOC evaluator.

The reference is pycocotools' ``COCOeval``: AP@[.50:.95] (10 IoU thresholds, 101-point interpolated
precision), AP50, AP75, AP small / medium / large (area < 32^2 <= medium < 96^2 <= large, the ground
truth's ``area`` field), AR@1/10/100 and AR small / medium / large; crowd ground truth (``iscrowd=1``)
matches any number of detections without counting as missed; -1 (here None) where nothing is defined.
The engine is faster-coco-eval (a C++ COCOeval, 5-7x faster, the same numbers: tests check them against
pycocotools to 1e-9) when installed, else pycocotools itself.

Inputs:

- ground truth: a COCO annotation dict, a dataset's own file (:func:`load_gt`) or
  ``fpn.data.coco.records_to_coco(records, classes)`` for any other dataset (VOC's difficult objects become
  crowd regions: ignored, as the VOC devkit ignores them);
- results, the COCO results format: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]`` with
  the ground truth's image and category ids (:func:`results_from_outputs`, :func:`write_results`,
  :func:`read_results`).

:func:`evaluate_coco` returns a :class:`CocoEvalResult`: an ``EvalResult`` (per class: AP@[.50:.95] of the
class at area "all" and 100 detections, as detectron2 reports it; its curve, the precision at the 101
recall thresholds averaged over the 10 IoU thresholds, whose mean is that AP) plus the 12 summary numbers.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from fpn.data.coco import bbox_of, int_id, list_of_objects, read_coco_json
from fpn.errors import DataWarning, UserError
from fpn.evaluation.voc_eval import EvalResult
from fpn.io import atomic_write_text

METRIC = "coco"
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
ENGINES = ("auto", "faster-coco-eval", "pycocotools")
INSTALL_HINT = "pip install faster-coco-eval (a dependency of fpn: reinstall it with pip install .)"
# the lines pycocotools' summarize() prints, one per entry of STAT_NAMES
_SUMMARY = [
    ("Average Precision", "AP", "0.50:0.95", "all", 100), ("Average Precision", "AP", "0.50", "all", 100),
    ("Average Precision", "AP", "0.75", "all", 100), ("Average Precision", "AP", "0.50:0.95", "small", 100),
    ("Average Precision", "AP", "0.50:0.95", "medium", 100), ("Average Precision", "AP", "0.50:0.95", "large", 100),
    ("Average Recall", "AR", "0.50:0.95", "all", 1), ("Average Recall", "AR", "0.50:0.95", "all", 10),
    ("Average Recall", "AR", "0.50:0.95", "all", 100), ("Average Recall", "AR", "0.50:0.95", "small", 100),
    ("Average Recall", "AR", "0.50:0.95", "medium", 100), ("Average Recall", "AR", "0.50:0.95", "large", 100),
]  # fmt: skip


@dataclass
class CocoEvalResult(EvalResult):
    """``EvalResult`` of the COCO metric (``map`` is AP@[.50:.95]) plus ``stats``: the 12 COCOeval numbers
    by ``STAT_NAMES`` (None where pycocotools gives -1), and the ``engine`` that computed them."""

    stats: dict[str, float | None] = field(default_factory=dict)
    engine: str = ""

    def summary_lines(self) -> list[str]:
        """The 12 lines of pycocotools' ``summarize()``, same format."""
        out = []
        for (title, short, iou, area, dets), name in zip(_SUMMARY, STAT_NAMES):
            v = self.stats.get(name)
            out.append(
                f" {title:<18} ({short}) @[ IoU={iou:<9} | area={area:>6s} | maxDets={dets:>3d} ] = "
                f"{-1.0 if v is None else v:0.3f}"
            )
        return out


def _engine(name: str = "auto"):
    """(engine name, COCO class, COCOeval class); a UserError saying how to install one when missing."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {name!r}")
    if name in ("auto", "faster-coco-eval"):
        try:
            from faster_coco_eval import COCO, COCOeval_faster

            return "faster-coco-eval", COCO, COCOeval_faster
        except ImportError:
            if name != "auto":
                raise UserError(f"the faster-coco-eval engine is not installed: {INSTALL_HINT}") from None
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return "pycocotools", COCO, COCOeval
    except ImportError:
        raise UserError(f"COCO metrics need faster-coco-eval or pycocotools: {INSTALL_HINT}") from None


def check_engine(name: str = "auto") -> str:
    """The COCO evaluation engine that will run (``name`` or the first installed), checked before a run that needs
    it at its end; a UserError saying how to install one when there is none."""
    return _engine(name)[0]


def _coco_api(coco_class, dataset: dict):
    """A COCO API object over ``dataset`` (both libraries; pycocotools' constructor only reads files)."""
    api = coco_class()
    api.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


# --- ground truth ------------------------------------------------------------------------------------------


def load_gt(path: str | Path) -> dict:
    """A COCO annotation file ready for COCOeval, checked for what box evaluation reads (one-line
    UserErrors): images and categories with unique integer ids, annotations of known images and categories
    with a ``bbox`` of 4 numbers and unique ids (the COCO API would silently merge duplicates). As for
    pycocotools, file names, image sizes and category names are not needed. ``segmentation`` values are cut
    out; a missing ``area`` becomes the box area, ``iscrowd`` 0, an annotation ``id`` its position + 1."""
    data = read_coco_json(path)
    data.setdefault("annotations", [])  # a file without annotations: nothing to find
    ids: dict[str, set] = {}
    for key, what in (("images", "image"), ("categories", "category")):
        ids[key] = set()
        for i, item in enumerate(list_of_objects(data, key, path)):
            item_id = int_id(item.get("id"), f"{key}[{i}].id", path)
            if item_id in ids[key]:
                raise UserError(f"{path}: {what} id {item_id} is listed twice")
            ids[key].add(item_id)
    seen: set = set()
    for k, ann in enumerate(list_of_objects(data, "annotations", path)):
        ann_id = int_id(ann.setdefault("id", k + 1), f"annotations[{k}].id", path)
        if ann_id in seen:
            raise UserError(f"{path}: annotation id {ann_id} is used twice")
        seen.add(ann_id)
        for field_name, key in (("image_id", "images"), ("category_id", "categories")):
            value = ann.get(field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value not in ids[key]:
                raise UserError(f"{path}: annotation {ann_id} has {field_name} {value!r}, which is not in '{key}'")
        bbox = bbox_of(ann, ann_id, path)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(bbox[2]) * float(bbox[3]))
    return data


# --- results -----------------------------------------------------------------------------------------------


def results_from_outputs(
    image_ids: Sequence[str],
    outputs: Sequence[Mapping],
    coco_image_id: Mapping[str, int],
    category_ids: Sequence[int],
) -> list[dict]:
    """Model outputs (one dict per image: ``boxes`` (D, 4) continuous xyxy in original-image pixels,
    ``scores``, ``labels`` in 1..C) -> COCO results; ``coco_image_id`` maps a record id to its COCO image id,
    label c becomes ``category_ids[c - 1]``. Boxes are rounded to 0.01 px, scores to 1e-5."""
    if len(image_ids) != len(outputs):
        raise ValueError(f"{len(image_ids)} image ids but {len(outputs)} outputs")
    cats = [int(c) for c in category_ids]
    results = []
    for rid, out in zip(image_ids, outputs):
        boxes = _numpy(out["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _numpy(out["scores"]).astype(np.float64).reshape(-1)
        labels = _numpy(out["labels"]).astype(np.int64).reshape(-1)
        if labels.size and (labels.min() < 1 or labels.max() > len(cats)):
            raise ValueError(f"image '{rid}': labels must lie in 1..{len(cats)}, got {labels.tolist()}")
        xywh = np.round(np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1), 2)  # (D, 4)
        image_id = int(coco_image_id[str(rid)])
        for box, score, label in zip(xywh.tolist(), np.round(scores, 5).tolist(), labels.tolist()):
            results.append({"image_id": image_id, "category_id": cats[label - 1], "bbox": box, "score": score})
    return results


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def write_results(path: str | Path, results: Sequence[dict]) -> Path:
    """Write COCO results as one JSON list (one detection per line), atomically; returns the path."""
    lines = ",\n".join(json.dumps(r, separators=(",", ":"), allow_nan=False) for r in results)
    atomic_write_text(path, f"[{lines}]\n" if results else "[]\n")
    return Path(path)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_results(path: str | Path, gt: Mapping) -> list[dict]:
    """Read a COCO results file and check it against the ground truth ``gt``: a UserError naming the file
    and the entry for a malformed one or an image not in ``gt``; detections of categories not in ``gt``
    are left out with one warning (COCOeval never looks at them, so the numbers are unchanged)."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path}: results file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: COCO results are a JSON list of detections, not a {type(data).__name__}")
    images = {img["id"] for img in gt["images"]}
    cats = {c["id"] for c in gt["categories"]}
    kept, unknown = [], []
    for i, det in enumerate(data):
        where = f"{path}: detection {i}"
        if not isinstance(det, dict):
            raise UserError(f"{where} is not a JSON object")
        bbox, score = det.get("bbox"), det.get("score")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
            raise UserError(f"{where} has no bbox [x, y, width, height] of finite numbers (got {bbox!r})")
        if not _number(score):
            raise UserError(f"{where} has no finite score (got {score!r})")
        image_id, category_id = det.get("image_id"), det.get("category_id")
        if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id not in images:
            raise UserError(f"{where} has image_id {image_id!r}, which is not an image of the ground truth")
        if isinstance(category_id, bool) or not isinstance(category_id, int):
            raise UserError(f"{where} has no integer category_id (got {category_id!r})")
        if category_id in cats:
            kept.append({"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score})
        else:
            unknown.append(category_id)
    if unknown:
        warnings.warn(
            f"{path}: {len(unknown)} detections have category ids that are not in the ground truth "
            f"(e.g. {', '.join(map(str, sorted(set(unknown))[:5]))}); left out, as COCOeval ignores them",
            DataWarning,
            stacklevel=2,
        )
    return kept


# --- evaluation --------------------------------------------------------------------------------------------


def _class_names(categories: Sequence[dict], cat_ids: Sequence[int]) -> tuple[str, ...]:
    """Category names in ``cat_ids`` order: the id when a category has no name, "name (id)" when a name is
    used twice (the per-class table is keyed by name)."""
    by_id = {c["id"]: str(c.get("name", c["id"])) for c in categories}
    count = Counter(by_id[c] for c in cat_ids)
    return tuple(by_id[c] if count[by_id[c]] == 1 else f"{by_id[c]} ({c})" for c in cat_ids)


def evaluate_coco(gt: dict, results: Sequence[dict], engine: str = "auto") -> CocoEvalResult:
    """COCOeval (bbox) of ``results`` against the COCO annotation dict ``gt`` (both as described in the
    module docstring; ``gt``'s annotations get COCOeval's ``ignore`` key). Class names are the ground
    truth's category names in id order."""
    name, coco_class, eval_class = _engine(engine)
    coco_gt = _coco_api(coco_class, gt)
    results = [dict(r) for r in results]  # loadRes adds keys to each detection
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # pycocotools' loadRes cannot take an empty list
            coco_dt = _coco_api(coco_class, {"images": gt["images"], "categories": gt["categories"], "annotations": []})
        ev = eval_class(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(v) for v in np.asarray(ev.stats, dtype=np.float64)[: len(STAT_NAMES)]]

    cat_ids = list(ev.params.catIds)  # sorted ids of the ground truth's categories
    classes = _class_names(gt["categories"], cat_ids)
    precision = np.asarray(ev.eval["precision"])  # (T, R, K, A, M): IoU, recall, class, area, max dets
    rec_thrs = np.asarray(ev.params.recThrs, dtype=np.float64)
    npos = dict.fromkeys(cat_ids, 0)
    for ann in gt["annotations"]:
        if not ann.get("iscrowd") and ann["category_id"] in npos:
            npos[ann["category_id"]] += 1
    dets = dict.fromkeys(cat_ids, 0)
    for r in results:
        dets[r["category_id"]] = dets.get(r["category_id"], 0) + 1

    ap, curves = {}, {}
    for k, (cid, cls) in enumerate(zip(cat_ids, classes)):
        p = precision[:, :, k, 0, -1]  # (T, R) area "all", 100 detections
        if (p > -1).any():
            ap[cls] = float(np.mean(p[p > -1]))
            curves[cls] = (rec_thrs, np.where(p > -1, p, 0.0).mean(axis=0))
        else:  # no ground truth of the class
            ap[cls], curves[cls] = None, (np.zeros(0), np.zeros(0))
    m = stats[0] if stats[0] > -1 else float("nan")
    return CocoEvalResult(
        metric=METRIC, ap=ap, map=m, curves=curves, classes=classes,
        npos={cls: npos[c] for c, cls in zip(cat_ids, classes)},
        num_detections={cls: dets[c] for c, cls in zip(cat_ids, classes)},
        stats={n: (v if v > -1 else None) for n, v in zip(STAT_NAMES, stats)}, engine=name,
    )  # fmt: skip
