"""IoU matcher: label each candidate box (anchor or proposal) positive, negative or ignored.

Batched over images with padded ground truth: ``iou`` is (N, G, B) for N images, G ground-truth slots
(padded; ``gt_valid`` (N, G) marks the real ones) and B candidates.

Rule for a candidate with best IoU ``m`` over the valid ground truths:

* ``m >= fg_thresh``             -> 1 (positive), matched to the argmax ground truth;
* ``bg_lo <= m < bg_hi``         -> 0 (negative);
* otherwise                      -> -1 (ignored: between the thresholds, or below ``bg_lo``).

With ``allow_low_quality`` (the RPN), every candidate whose IoU with some ground truth equals that
ground truth's best IoU (ties included) is also positive, so each object gets at least one anchor.
Ground truths whose best IoU is 0 (no overlap with any candidate) are left out of that rule; otherwise
every zero-IoU candidate would "tie" and become positive.

An image without ground truth has only negatives, whatever ``bg_lo`` (it still teaches "background").

Crowd regions (``crowd_ioa``: the largest fraction of each candidate's area inside one, see
``fpn.model.targets.crowd_ioa``): a candidate with ``crowd_ioa >= crowd_thresh`` that is not positive is
ignored, as in Detectron's crowd filter (0.7): it is neither an object nor background.
"""

from __future__ import annotations

import torch
from torch import Tensor

POSITIVE, NEGATIVE, IGNORE = 1, 0, -1


class Matcher:
    def __init__(
        self, fg_thresh: float, bg_hi: float, bg_lo: float = 0.0, allow_low_quality: bool = False,
        crowd_thresh: float = 0.7,
    ):  # fmt: skip
        if not bg_lo <= bg_hi <= fg_thresh:
            raise ValueError(f"matcher thresholds must satisfy bg_lo <= bg_hi <= fg: {bg_lo}, {bg_hi}, {fg_thresh}")
        self.fg_thresh = fg_thresh
        self.bg_hi = bg_hi
        self.bg_lo = bg_lo
        self.allow_low_quality = allow_low_quality
        self.crowd_thresh = crowd_thresh

    def __call__(self, iou: Tensor, gt_valid: Tensor, crowd_ioa: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """iou (N, G, B) float, gt_valid (N, G) bool, crowd_ioa (N, B) float or None -> (matched (N, B)
        int64 index into G, labels (N, B) int64 in {1, 0, -1}). ``matched`` is meaningful only where
        labels == 1."""
        # padded ground truths must never win: their IoU is 0, like "no overlap"
        iou = iou.masked_fill(~gt_valid.unsqueeze(2), 0.0)
        best_iou, matched = iou.max(dim=1)  # (N, B): best ground truth per candidate (first on ties)

        labels = torch.full_like(matched, IGNORE)
        labels.masked_fill_((best_iou >= self.bg_lo) & (best_iou < self.bg_hi), NEGATIVE)
        labels.masked_fill_(best_iou >= self.fg_thresh, POSITIVE)
        labels.masked_fill_(~gt_valid.any(dim=1, keepdim=True), NEGATIVE)  # (N, 1): images without objects

        if self.allow_low_quality:
            best_per_gt = iou.max(dim=2, keepdim=True).values  # (N, G, 1)
            # (N, G, B) -> (N, B): the candidate is (one of) the best for some overlapping ground truth
            is_best = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=1)
            # the argmax ground truth of such a candidate overlaps it at least as much, so `matched` stays
            labels.masked_fill_(is_best, POSITIVE)
        if crowd_ioa is not None:
            labels.masked_fill_((crowd_ioa >= self.crowd_thresh) & (labels != POSITIVE), IGNORE)
        return matched, labels
