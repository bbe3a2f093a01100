"""Detections from the box head's outputs (inference only).

Per image: softmax over the C+1 classes; each proposal decoded once per foreground class (or once,
class-agnostic); boxes clipped to the image; candidates kept where score > ``score_thresh`` and the box
is not empty; per-class NMS at ``nms_thresh`` as a keep mask (the ``nms`` implementation chosen at build,
``fpn.model.ops``), then each image's best ``detections_per_image`` kept boxes (``PostProcessor``); or soft-NMS
(``SoftNMSPostProcessor``: linear or gaussian score decay, the seed's option). Boxes are in network-input pixels, or
rescaled to the original
image (per-axis factor original / input size, then clipped) when ``original_sizes`` is given.

The output is flat (all images' detections, grouped by image, each image's best first, with the image index of
each), so that it is also the output of an exported graph; ``split_by_image`` makes one dict per image of it.
Soft-NMS does not export.

Driven by cfg.model: score_thresh, nms_thresh, detections_per_image, soft_nms, soft_nms_method,
soft_nms_sigma, soft_nms_min_score.

Shapes: N images, P proposals per image (padded, ``valid``), C foreground classes, K = C+1 or 1
regression outputs per proposal, D detections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fpn.model.box_coder import BoxCoder
from fpn.model.box_ops import batched_iou, boxes_big_enough, clip_boxes, rank_within_groups
from fpn.model.ops.nms import NMS, BatchedNMS, best_kept

MIN_DETECTION_SIZE = 1e-2  # pixels; boxes clipped to (almost) nothing are dropped


def soft_nms(
    boxes: Tensor, scores: Tensor, groups: Tensor, method: str = "linear", sigma: float = 0.5,
    iou_thresh: float = 0.3, min_score: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017), independently per group, all groups at once.

    boxes (D, 4), scores (D,), groups (D,) int64 -> (keep (M,) indices sorted by decayed score,
    decayed scores (M,)). Repeatedly take the best remaining box of each group and decay the others
    by ``1 - iou`` where iou > iou_thresh (linear) or by ``exp(-iou^2 / sigma)`` (gaussian); a box whose
    score falls below ``min_score`` is dropped. Iterations = the largest group's size (at most).
    """
    if method not in ("linear", "gaussian"):
        raise ValueError(f"soft-NMS method must be linear or gaussian, got {method!r}")
    d = scores.numel()
    if d == 0:
        return torch.zeros(0, dtype=torch.int64, device=scores.device), scores.new_zeros(0)
    _, inverse = torch.unique(groups, return_inverse=True)
    num_groups = int(inverse.max()) + 1
    order, rank = rank_within_groups(inverse, num_groups)
    width = int(rank.max()) + 1
    # one row per group, padded: (num_groups, width) table of indices into the D boxes (-1 = padding)
    table = torch.full((num_groups, width), -1, dtype=torch.int64, device=scores.device)
    table[inverse[order], rank] = order
    present = table >= 0
    box_t = boxes[table.clamp(min=0)]  # (num_groups, width, 4)
    score_t = torch.where(present, scores[table.clamp(min=0)], torch.zeros_like(table, dtype=scores.dtype))
    alive = present & (score_t >= min_score)  # (num_groups, width) still competing
    picked = torch.zeros_like(present)
    rows = torch.arange(num_groups, device=scores.device)
    while bool(alive.any()):  # host sync per iteration: inference only
        best = torch.where(alive, score_t, torch.full_like(score_t, -1.0)).argmax(dim=1)  # (num_groups,)
        has = alive[rows, best]  # groups that still had a candidate
        picked[rows, best] |= has
        alive[rows, best] = False
        iou = batched_iou(box_t[rows, best].unsqueeze(1), box_t).squeeze(1)  # (num_groups, width)
        if method == "linear":
            decay = torch.where(iou > iou_thresh, 1.0 - iou, torch.ones_like(iou))
        else:
            decay = torch.exp(-(iou * iou) / sigma)
        score_t = torch.where(alive & has.unsqueeze(1), score_t * decay, score_t)
        alive &= score_t >= min_score
    keep = table[picked]
    new_scores = score_t[picked]
    new_scores, by_score = new_scores.sort(descending=True)
    return keep[by_score], new_scores


class PostProcessor:
    """Scores, boxes and candidates (above the score threshold, not empty); NMS per image and class; each image's
    best ``detections_per_image`` kept boxes, flat. ``nms``: the ``fpn.model.ops.nms`` interface."""

    def __init__(
        self, box_coder: BoxCoder, score_thresh: float = 0.05, nms_thresh: float = 0.5,
        detections_per_image: int = 100, nms: NMS | None = None, stable_sort: bool = True,
    ):
        self.box_coder = box_coder
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.nms = nms if nms is not None else BatchedNMS()
        self.stable_sort = stable_sort  # fpn.model.ops.nms.best_kept

    @torch.no_grad()
    def __call__(
        self, pred_class_logits: Tensor, pred_deltas: Tensor, proposals: Tensor, valid: Tensor,
        image_sizes: Tensor, original_sizes: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """pred_class_logits (N, P, C+1), pred_deltas (N, P, K, 4), proposals (N, P, 4), valid (N, P),
        image_sizes / original_sizes (N, 2) float (h, w) -> flat detections of all images: boxes (D, 4),
        scores (D,), labels (D,) int64 in 1..C, image (D,) int64 index of each one's image; grouped by image,
        best score first within an image."""
        boxes, scores, candidate = self.candidates(pred_class_logits, pred_deltas, proposals, valid, image_sizes)
        image, boxes, scores, labels = self.select(boxes, scores, candidate, image_sizes.max())
        if original_sizes is not None:
            factor = (original_sizes / image_sizes)[image]  # (D, 2) (h, w) factors
            # (D, 4) * (D, 4) factors (w, h, w, h); then clip each box to its own image: (D, 1, 4) is
            # "D images of one box" for clip_boxes
            boxes = clip_boxes((boxes * factor[:, [1, 0, 1, 0]]).unsqueeze(1), original_sizes[image]).squeeze(1)
        return boxes, scores, labels, image

    @torch.no_grad()
    def padded(
        self, pred_class_logits: Tensor, pred_deltas: Tensor, proposals: Tensor, valid: Tensor,
        image_sizes: Tensor, original_sizes: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``__call__``'s detections as fixed-shape tables, nothing read on the host (a graph can hold it):
        boxes (N, D, 4), scores (N, D), labels (N, D), found (N, D) bool with D = ``detections_per_image``; each
        image's best first, its found ones ahead of the padding. ``compact`` makes them ``__call__``'s output."""
        boxes, scores, candidate = self.candidates(pred_class_logits, pred_deltas, proposals, valid, image_sizes)
        boxes, scores, labels, found = self.select_padded(boxes, scores, candidate, image_sizes.max())
        if original_sizes is not None:
            factor = original_sizes / image_sizes  # (N, 2) (h, w) factors
            boxes = clip_boxes(boxes * factor[:, None, [1, 0, 1, 0]], original_sizes)  # (N, D, 4)
        return boxes, scores, labels, found

    def candidates(self, pred_class_logits: Tensor, pred_deltas: Tensor, proposals: Tensor, valid: Tensor,
                   image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """-> boxes (N, P, C, 4) decoded per class and clipped, scores (N, P, C), candidate (N, P, C) bool."""
        n, p, num_classes = pred_class_logits.shape
        c = num_classes - 1
        scores = F.softmax(pred_class_logits.float(), dim=-1)[..., 1:]  # (N, P, C), background dropped
        # (N, P, K, 4) -> (N, P, C, 4): class-specific deltas without the background's, or the agnostic one
        deltas = pred_deltas[:, :, 1:] if pred_deltas.shape[2] > 1 else pred_deltas.expand(n, p, c, 4)
        boxes = clip_boxes(self.box_coder.decode(deltas, proposals.unsqueeze(2)), image_sizes)  # (N, P, C, 4)
        candidate = valid.unsqueeze(2) & (scores > self.score_thresh) & boxes_big_enough(boxes, MIN_DETECTION_SIZE)
        return boxes, scores, candidate

    def select_padded(self, boxes: Tensor, scores: Tensor, candidate: Tensor, max_coordinate: Tensor):
        """boxes (N, P, C, 4), scores / candidate (N, P, C) -> each image's kept detections as (N, D) tables
        (boxes, scores, labels, found): NMS per (image, class) group as a keep mask, each image's best
        ``detections_per_image``."""
        n, p, c = scores.shape
        # (N, P, C, ...) -> (N, C*P, ...): the classes as groups one after the other
        keep = self.nms(boxes.transpose(1, 2).reshape(n, c * p, 4), scores.transpose(1, 2).reshape(n, c * p),
                        candidate.transpose(1, 2).reshape(n, c * p), [p] * c, self.nms_thresh, max_coordinate)
        # (N, C*P) -> (N, P*C): proposal-major again, so that equal scores rank by proposal, then class
        keep = keep.view(n, c, p).transpose(1, 2).reshape(n, p * c)
        # (N, D) each; best: position in the image's (P*C) proposal-major candidates
        best, found = best_kept(scores.reshape(n, p * c), keep, self.detections_per_image, self.stable_sort)
        image = torch.arange(n, device=best.device)[:, None]  # (N, 1)
        prop, cls = best // c, best % c
        return boxes[image, prop, cls], scores[image, prop, cls], cls + 1, found

    def select(self, boxes: Tensor, scores: Tensor, candidate: Tensor, max_coordinate: Tensor):
        """``select_padded``'s tables, flat (image, boxes, scores, labels)."""
        boxes, scores, labels, found = self.select_padded(boxes, scores, candidate, max_coordinate)
        return compact(boxes, scores, labels, found)


def compact(boxes: Tensor, scores: Tensor, labels: Tensor, found: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``PostProcessor.padded``'s (N, D) tables -> the found detections flat, image after image: (image (D_all,),
    boxes, scores, labels). Data-dependent: on a GPU the host waits for their number (read the tables on the host
    first to avoid it, as ``FPNDetector.detect_to_host`` does)."""
    flat = found.reshape(-1).nonzero().squeeze(1)  # (D_all,) positions in the (N, D) tables, image after image
    image = flat // found.shape[1]
    return image, boxes.reshape(-1, 4)[flat], scores.reshape(-1)[flat], labels.reshape(-1)[flat]


class SoftNMSPostProcessor(PostProcessor):
    """``PostProcessor`` with soft-NMS (``soft_nms``) instead of NMS: the candidates gathered (their number read
    on the host), their scores decayed per image and class, each image's best ``detections_per_image``."""

    def __init__(self, box_coder: BoxCoder, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_image: int = 100, method: str = "linear", sigma: float = 0.5,
                 min_score: float = 0.001):  # fmt: skip
        super().__init__(box_coder, score_thresh, nms_thresh, detections_per_image)
        if method not in ("linear", "gaussian"):
            raise ValueError(f"soft-NMS method must be linear or gaussian, got {method!r}")
        self.method, self.sigma, self.min_score = method, sigma, min_score

    def padded(self, *args, **kwargs):
        raise NotImplementedError("soft-NMS reads the number of candidates on the host: no fixed-shape form")

    def select(self, boxes: Tensor, scores: Tensor, candidate: Tensor, max_coordinate: Tensor):
        n, _, c = scores.shape
        image, prop, cls = candidate.nonzero(as_tuple=True)  # (D,) each; data-dependent: the host waits
        boxes, scores = boxes[image, prop, cls], scores[image, prop, cls]
        keep, scores_kept = soft_nms(boxes, scores, image * c + cls, self.method, self.sigma, self.nms_thresh,
                                     self.min_score)  # fmt: skip
        scores = scores.clone()
        scores[keep] = scores_kept
        # best detections_per_image per image
        order, rank = rank_within_groups(image[keep], n)
        keep = keep[order][rank < self.detections_per_image]
        return image[keep], boxes[keep], scores[keep], cls[keep] + 1


def split_by_image(boxes: Tensor, scores: Tensor, labels: Tensor, image: Tensor, n: int) -> list[dict[str, Tensor]]:
    """Flat detections grouped by image (the post-processor's output) -> ``n`` dicts {"boxes" (D_i, 4),
    "scores" (D_i,), "labels" (D_i,)}."""
    counts = [0] * n
    for i in image.tolist():  # one read of the image indices (bincount on CUDA would read its maximum first)
        counts[i] += 1
    return [
        {"boxes": b, "scores": s, "labels": lab}
        for b, s, lab in zip(boxes.split(counts), scores.split(counts), labels.split(counts))
    ]

