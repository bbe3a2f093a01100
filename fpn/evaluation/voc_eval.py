"""PASCAL VOC detection evaluation, exactly as the devkit's Python port (py-faster-rcnn ``voc_eval.py``).

Conventions (all identical to the devkit):

- Boxes are VOC 1-based inclusive pixel boxes; a box ``(x1, y1, x2, y2)`` is ``x2 - x1 + 1`` pixels wide,
  and IoU uses that ``+1`` convention (on continuous boxes it equals the plain IoU).
- Per class, detections are ranked by descending score. The devkit uses ``np.argsort(-score)`` (quicksort,
  unspecified order among equal scores); we use a *stable* sort, so equal scores keep their input order
  (the order of the result file lines) and results are reproducible.
- Each ranked detection is compared with the ground truth of its image and class, difficult objects
  included, and takes the one of highest IoU (the first in annotation order on ties). If that IoU is
  strictly above ``iou_thresh``: a difficult object makes the detection *ignored* (neither TP nor FP);
  otherwise the first such detection is a TP and marks the object, later ones are FP (duplicates).
  IoU <= threshold, or no ground truth of the class in the image, gives an FP.
- ``npos`` counts the non-difficult objects. ``recall = tp / npos``,
  ``precision = tp / max(tp + fp, eps)`` over the cumulative counts (ignored detections stay in the curve
  as repeated points, as in the devkit).
- AP: ``"voc07"`` is the 11-point interpolated AP with the devkit's thresholds ``np.arange(0., 1.1, 0.1)``
  (floating point, so e.g. the 4th threshold is 0.30000000000000004 and a recall of exactly 3/10 does not
  reach it, as in the devkit), summed as eleven ``p / 11`` terms in order, so a perfect class scores
  1.0000000000000002 exactly like the devkit; ``"area"`` (VOC2010+) is the area under the precision envelope.

Deliberate difference: a class without any non-difficult ground truth has an undefined AP (the devkit
divides by zero and yields NaN); we report ``None`` and leave it out of the mAP. A class with ground truth
but no detections has AP 0.

Ground truth, as built by ``ground_truth_from_records``: ``{image_id: {"boxes": float64 (K, 4) VOC boxes,
"labels": int64 (K,) in 1..C, "difficult": bool (K,)}}``; its keys are the evaluated image set.
Detections: ``{class_name: [(image_id, score, x1, y1, x2, y2), ...]}``, VOC boxes, any order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from fpn.data.voc import to_voc_box
from fpn.errors import UserError

METRICS = ("voc07", "area")
# The devkit's 11 recall thresholds, reproduced bit for bit (see module docstring).
VOC07_THRESHOLDS = np.arange(0.0, 1.1, 0.1)
# Bound on detections x ground-truth slots handled at once when computing IoUs.
_CHUNK_ELEMS = 1 << 20


@dataclass
class EvalResult:
    """Outcome of ``evaluate``.

    ``ap[c]`` is None when class c has no non-difficult ground truth; ``map`` is the mean of the defined APs
    (NaN when none is defined). ``curves[c] = (recall, precision)`` over the ranked detections (empty arrays
    when the class has no detections or no ground truth). ``npos`` / ``num_detections`` per class.
    """

    metric: str
    ap: dict[str, float | None]
    map: float
    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    classes: tuple[str, ...] = ()
    npos: dict[str, int] = field(default_factory=dict)
    num_detections: dict[str, int] = field(default_factory=dict)
    iou_thresh: float = 0.5

    @property
    def num_defined(self) -> int:
        """Number of classes whose AP enters the mAP."""
        return sum(ap is not None for ap in self.ap.values())


def ground_truth_from_records(records: Sequence[dict], classes: Sequence[str]) -> dict:
    """Records (continuous boxes) -> ground truth with VOC 1-based boxes, keyed by image id in record order."""
    num_classes = len(classes)
    gt = {}
    for rec in records:
        image_id = str(rec["id"])
        if image_id in gt:
            raise UserError(f"image set: image id '{image_id}' appears twice")
        boxes = np.asarray(rec["boxes"], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(rec["labels"], dtype=np.int64).reshape(-1)
        difficult = np.asarray(rec["difficult"], dtype=bool).reshape(-1)
        if not (len(boxes) == len(labels) == len(difficult)):
            raise ValueError(f"record '{image_id}': boxes, labels and difficult differ in length")
        if labels.size and (labels.min() < 1 or labels.max() > num_classes):
            raise ValueError(f"record '{image_id}': labels must lie in 1..{num_classes}, got {labels.tolist()}")
        voc = np.stack(to_voc_box(boxes.T), axis=1) if len(boxes) else boxes
        gt[image_id] = {"boxes": voc.astype(np.float64), "labels": labels, "difficult": difficult}
    return gt


def voc_ap(recall: np.ndarray, precision: np.ndarray, metric: str = "voc07") -> float:
    """AP from a recall/precision curve, as the devkit's ``voc_ap`` (``use_07_metric`` <=> ``"voc07"``)."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if metric == "voc07":
        ap = 0.0
        for t in VOC07_THRESHOLDS:  # sequential sum, same rounding as the devkit
            reached = recall >= t
            ap += (float(np.max(precision[reached])) if reached.any() else 0.0) / 11.0
        return float(ap)
    if metric == "area":
        mrec = np.concatenate(([0.0], recall, [1.0]))
        mpre = np.concatenate(([0.0], precision, [0.0]))
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope (max is exact)
        i = np.where(mrec[1:] != mrec[:-1])[0]
        return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def _class_ground_truth(gt_img: np.ndarray, gt_boxes: np.ndarray, gt_diff: np.ndarray, num_images: int):
    """One class's ground truth padded per image: boxes (N, G, 4), difficult (N, G), count (N,).

    Rows come grouped by image in annotation order, so slot j of an image is its j-th object of the class,
    which keeps the devkit's first-wins tie-breaking of argmax.
    """
    count = np.bincount(gt_img, minlength=num_images)
    slots = int(count.max()) if len(gt_img) else 0
    start = np.cumsum(count) - count
    rank = np.arange(len(gt_img)) - start[gt_img]
    boxes = np.zeros((num_images, slots, 4))
    diff = np.zeros((num_images, slots), dtype=bool)
    boxes[gt_img, rank] = gt_boxes
    diff[gt_img, rank] = gt_diff
    return boxes, diff, count


def _best_overlaps(det_img, det_boxes, pad_boxes, pad_count):
    """For each detection: max IoU over its image's ground truth (-inf if none) and the argmax slot.

    The arithmetic is the devkit's, operation by operation, so the IoUs are bit-identical.
    """
    n, slots = len(det_img), pad_boxes.shape[1]
    ovmax = np.full(n, -np.inf)
    jmax = np.zeros(n, dtype=np.int64)
    if slots == 0:
        return ovmax, jmax
    step = max(1, _CHUNK_ELEMS // slots)
    for s in range(0, n, step):
        img, bb = det_img[s : s + step], det_boxes[s : s + step, None, :]
        g = pad_boxes[img]  # (n, G, 4)
        iw = np.maximum(np.minimum(g[..., 2], bb[..., 2]) - np.maximum(g[..., 0], bb[..., 0]) + 1.0, 0.0)
        ih = np.maximum(np.minimum(g[..., 3], bb[..., 3]) - np.maximum(g[..., 1], bb[..., 1]) + 1.0, 0.0)
        inters = iw * ih
        uni = (
            (bb[..., 2] - bb[..., 0] + 1.0) * (bb[..., 3] - bb[..., 1] + 1.0)
            + (g[..., 2] - g[..., 0] + 1.0) * (g[..., 3] - g[..., 1] + 1.0)
            - inters
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            ov = inters / uni
        ov[np.arange(slots)[None, :] >= pad_count[img][:, None]] = -np.inf  # padding slots never win
        ovmax[s : s + step] = ov.max(axis=1)
        jmax[s : s + step] = ov.argmax(axis=1)
    return ovmax, jmax


def _match_class(det_img, det_boxes, pad_boxes, pad_diff, pad_count, iou_thresh):
    """TP / FP flags (float arrays) for detections already in rank order."""
    ovmax, jmax = _best_overlaps(det_img, det_boxes, pad_boxes, pad_count)
    hit = ovmax > iou_thresh  # NaN (degenerate box) compares False -> FP, as in the devkit
    on_difficult = np.zeros_like(hit)
    on_difficult[hit] = pad_diff[det_img[hit], jmax[hit]]
    candidate = np.flatnonzero(hit & ~on_difficult)
    # Greedy assignment in rank order: the first candidate on each object is the TP, the rest duplicates.
    key = det_img[candidate] * pad_boxes.shape[1] + jmax[candidate]
    _, first = np.unique(key, return_index=True)
    tp = np.zeros(len(det_img))
    tp[candidate[first]] = 1.0
    fp = np.zeros(len(det_img))
    fp[~hit] = 1.0
    fp[candidate] = 1.0 - tp[candidate]
    return tp, fp


def _class_detections(dets, image_index: Mapping[str, int], cls: str):
    """Detections of one class -> (image index, score, VOC box) arrays, in input order."""
    try:
        img = np.fromiter((image_index[str(d[0])] for d in dets), dtype=np.int64, count=len(dets))
    except KeyError as e:
        raise ValueError(f"detections of class '{cls}' refer to image {e}, which is not in the ground truth") from None
    if any(len(d) != 6 for d in dets):
        raise ValueError(f"detections of class '{cls}' must be (image_id, score, x1, y1, x2, y2) tuples")
    values = np.asarray([d[1:] for d in dets], dtype=np.float64).reshape(-1, 5)
    return img, values[:, 0], values[:, 1:5]


def _flatten_ground_truth(ground_truth: Mapping[str, dict]):
    """All objects of all images, in image then annotation order: image index, boxes, labels, difficult."""
    entries = list(ground_truth.values())
    sizes = [len(e["labels"]) for e in entries]
    img = np.repeat(np.arange(len(entries), dtype=np.int64), sizes)
    if not entries:
        return img, np.zeros((0, 4)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    boxes = np.concatenate([np.asarray(e["boxes"], dtype=np.float64).reshape(-1, 4) for e in entries])
    labels = np.concatenate([np.asarray(e["labels"], dtype=np.int64).reshape(-1) for e in entries])
    difficult = np.concatenate([np.asarray(e["difficult"], dtype=bool).reshape(-1) for e in entries])
    return img, boxes, labels, difficult


def evaluate(
    detections: Mapping[str, Sequence[tuple]],
    ground_truth: Mapping[str, dict],
    classes: Sequence[str],
    metric: str = "voc07",
    iou_thresh: float = 0.5,
) -> EvalResult:
    """Per-class AP and mAP of ``detections`` against ``ground_truth`` (formats in the module docstring).

    Classes missing from ``detections`` have no detections; keys not in ``classes`` raise ValueError, as do
    detections on images that are not in ``ground_truth``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    classes = tuple(classes)
    unknown = sorted(set(detections) - set(classes))
    if unknown:
        raise ValueError(f"detections for unknown classes: {unknown}")
    image_index = {image_id: i for i, image_id in enumerate(ground_truth)}
    num_images = len(image_index)
    all_img, all_boxes, all_labels, all_diff = _flatten_ground_truth(ground_truth)

    ap, curves, npos_by_class, num_dets = {}, {}, {}, {}
    for label, cls in enumerate(classes, start=1):
        sel = all_labels == label
        pad_boxes, pad_diff, pad_count = _class_ground_truth(all_img[sel], all_boxes[sel], all_diff[sel], num_images)
        npos = int(np.count_nonzero(~all_diff[sel]))
        det_img, scores, det_boxes = _class_detections(detections.get(cls, ()), image_index, cls)
        order = np.argsort(-scores, kind="stable")
        tp, fp = _match_class(det_img[order], det_boxes[order], pad_boxes, pad_diff, pad_count, iou_thresh)
        npos_by_class[cls], num_dets[cls] = npos, len(scores)
        if npos == 0:
            ap[cls], curves[cls] = None, (np.zeros(0), np.zeros(0))
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / float(npos)
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap[cls], curves[cls] = voc_ap(recall, precision, metric), (recall, precision)

    defined = [v for v in ap.values() if v is not None]
    m = float(np.mean(defined)) if defined else float("nan")
    return EvalResult(metric, ap, m, curves, classes, npos_by_class, num_dets, float(iou_thresh))
