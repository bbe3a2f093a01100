"""Detections from the box head's outputs (inference only).

Per image: softmax over the C+1 classes; each proposal decoded once per foreground class (or once,
class-agnostic); boxes clipped to the image; candidates kept where score > ``score_thresh`` and the box
is not empty; per-class NMS at ``nms_thresh`` (all images and classes in one ``batched_nms`` call), or
soft-NMS (``soft_nms``: linear or gaussian score decay, the seed's option); the best
``detections_per_image`` per image. Boxes are in network-input pixels, or rescaled to the original
image (per-axis factor original / input size, then clipped) when ``original_sizes`` is given.

The output is flat (all images' detections, grouped by image, each image's best first, with the image index of
each), so that it is also the output of an exported graph; ``split_by_image`` makes one dict per image of it.
Inside ``torch.export`` the per-class NMS is ``offset_nms`` (ONNX NonMaxSuppression); soft-NMS does not export.

Driven by cfg.model: score_thresh, nms_thresh, detections_per_image, soft_nms, soft_nms_method,
soft_nms_sigma, soft_nms_min_score.

Shapes: N images, P proposals per image (padded, ``valid``), C foreground classes, K = C+1 or 1
regression outputs per proposal, D detections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from fpn.structures import to_device
from fpn.model.box_coder import BoxCoder
from fpn.model.box_ops import batched_iou, boxes_big_enough, clip_boxes, rank_within_groups
from fpn.model.nms import nms_keep_mask, offset_nms, triton_available

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
    # "candidates": the boxes above the score threshold gathered (their number read on the host), then NMS;
    # "mask": NMS as a keep mask over every proposal of each (image, class) group (no host sync before the
    # final count with Triton on CUDA); "auto": mask on CUDA with Triton, else candidates. Soft-NMS and an
    # exported graph always take the candidates.
    NMS_IMPLS = ("auto", "candidates", "mask")

    def __init__(
        self, box_coder: BoxCoder, score_thresh: float = 0.05, nms_thresh: float = 0.5,
        detections_per_image: int = 100, soft_nms: bool = False, soft_nms_method: str = "linear",
        soft_nms_sigma: float = 0.5, soft_nms_min_score: float = 0.001, nms_impl: str = "auto",
    ):
        self.box_coder = box_coder
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.soft_nms = soft_nms
        self.soft_nms_method = soft_nms_method
        self.soft_nms_sigma = soft_nms_sigma
        self.soft_nms_min_score = soft_nms_min_score
        if nms_impl not in self.NMS_IMPLS:
            raise ValueError(f"nms_impl must be one of {self.NMS_IMPLS}, got {nms_impl!r}")
        self.nms_impl = nms_impl

    @torch.no_grad()
    def __call__(
        self, pred_class_logits: Tensor, pred_deltas: Tensor, proposals: Tensor, valid: Tensor,
        image_sizes: Tensor, original_sizes: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """pred_class_logits (N, P, C+1), pred_deltas (N, P, K, 4), proposals (N, P, 4), valid (N, P),
        image_sizes / original_sizes (N, 2) float (h, w) -> flat detections of all images: boxes (D, 4),
        scores (D,), labels (D,) int64 in 1..C, image (D,) int64 index of each one's image; grouped by image,
        best score first within an image."""
        n, p, num_classes = pred_class_logits.shape
        c = num_classes - 1
        scores = F.softmax(pred_class_logits.float(), dim=-1)[..., 1:]  # (N, P, C), background dropped
        # (N, P, K, 4) -> (N, P, C, 4): class-specific deltas without the background's, or the agnostic one
        deltas = pred_deltas[:, :, 1:] if pred_deltas.shape[2] > 1 else pred_deltas.expand(n, p, c, 4)
        boxes = clip_boxes(self.box_coder.decode(deltas, proposals.unsqueeze(2)), image_sizes)  # (N, P, C, 4)
        keep_mask = valid.unsqueeze(2) & (scores > self.score_thresh) & boxes_big_enough(boxes, MIN_DETECTION_SIZE)
        if self._nms_impl(boxes.device) == "mask" and not (self.soft_nms or torch.compiler.is_exporting()):
            image, boxes, scores, labels = self._best_kept(boxes, scores, keep_mask, image_sizes.max())
        else:
            image, boxes, scores, labels = self._best_of_candidates(boxes, scores, keep_mask, image_sizes.max())
        if original_sizes is not None:
            factor = (original_sizes / image_sizes)[image]  # (D, 2) (h, w) factors
            # (D, 4) * (D, 4) factors (w, h, w, h); then clip each box to its own image: (D, 1, 4) is
            # "D images of one box" for clip_boxes
            boxes = clip_boxes((boxes * factor[:, [1, 0, 1, 0]]).unsqueeze(1), original_sizes[image]).squeeze(1)
        return boxes, scores, labels, image

    def _nms_impl(self, device: torch.device) -> str:
        if self.nms_impl != "auto":
            return self.nms_impl
        return "mask" if device.type == "cuda" and triton_available() else "candidates"

    def _best_of_candidates(self, boxes: Tensor, scores: Tensor, keep_mask: Tensor, max_coordinate: Tensor):
        """The candidates above the score threshold (their number read on the host), NMS (soft or not) by
        image and class, each image's best ``detections_per_image``: flat (image, boxes, scores, labels)."""
        n, _, c = scores.shape
        image, prop, cls = keep_mask.nonzero(as_tuple=True)  # (D,) each; data-dependent: the host waits
        boxes, scores = boxes[image, prop, cls], scores[image, prop, cls]
        groups = image * c + cls  # NMS per image and class
        if self.soft_nms:
            keep, scores_kept = soft_nms(boxes, scores, groups, self.soft_nms_method, self.soft_nms_sigma,
                                         self.nms_thresh, self.soft_nms_min_score)
            scores = scores.clone()
            scores[keep] = scores_kept
        elif torch.compiler.is_exporting() or boxes.is_cuda:  # one call (torchvision's batched_nms loops on CUDA)
            keep = offset_nms(boxes, scores, groups, self.nms_thresh, max_coordinate)  # boxes are clipped
        else:
            keep = batched_nms(boxes, scores, groups, self.nms_thresh)  # sorted by score
        # best detections_per_image per image
        order, rank = rank_within_groups(image[keep], n)
        keep = keep[order][rank < self.detections_per_image]
        return image[keep], boxes[keep], scores[keep], cls[keep] + 1

    def _best_kept(self, boxes: Tensor, scores: Tensor, keep_mask: Tensor, max_coordinate: Tensor):
        """The same detections with fixed shapes until the end: NMS as a keep mask over the (image, class) groups
        of all P proposals (``nms_keep_mask``: no host sync with Triton on CUDA), each image's best
        ``detections_per_image`` kept boxes, then one read of their number per image to lay them out flat."""
        n, p, c = scores.shape
        # (N, P, C, ...) -> (N*C, P, ...): one group per image and class
        group_boxes = boxes.permute(0, 2, 1, 3).reshape(n * c, p, 4)
        group_scores = scores.permute(0, 2, 1).reshape(n * c, p)
        keep = nms_keep_mask(group_boxes, group_scores, keep_mask.permute(0, 2, 1).reshape(n * c, p),
                             self.nms_thresh, max_coordinate)  # fmt: skip
        kept_scores = torch.where(keep, group_scores, float("-inf")).reshape(n, c * p)  # (N, C*P) class-major
        # each image's best kept boxes (the stable sort breaks ties by class, then proposal)
        best = kept_scores.argsort(dim=1, descending=True, stable=True)[:, : self.detections_per_image]  # (N, D)
        best_scores = kept_scores.gather(1, best)
        counts = (best_scores > float("-inf")).sum(dim=1).tolist()  # the host reads how many: the one sync
        width = best.shape[1]
        # the first counts[i] entries of row i, image after image: (D,) flat positions in (N, width)
        flat = to_device(torch.cat([torch.arange(k) + i * width for i, k in enumerate(counts)]), boxes.device)
        image = flat // width
        index = best.reshape(-1)[flat]  # (D,) position in the image's (C*P) class-major candidates
        cls, prop = index // p, index % p
        return image, boxes[image, prop, cls], best_scores.reshape(-1)[flat], cls + 1


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

