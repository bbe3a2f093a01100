"""Ground truth of a batch, padded to one tensor per field so matching runs batched.

Crowd regions (COCO ``iscrowd=1``, the loader's ``crowd_boxes``) are kept apart from the objects: they are
no ground truth to match, but anchors and proposals lying mostly inside one are ignored by the matchers
(neither positive nor background), see :meth:`GroundTruth.crowd_ioa`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from fpn.model.box_ops import batched_ioa


@dataclass
class GroundTruth:
    """N images, G = max(1, most objects in an image) slots; padding slots have valid False,
    box 0 and label 0."""

    boxes: Tensor  # (N, G, 4) float32 continuous xyxy, network-input pixels
    labels: Tensor  # (N, G) int64 in 1..C
    valid: Tensor  # (N, G) bool
    crowd_boxes: Tensor | None = None  # (N, M, 4) crowd regions; None when no image of the batch has one
    crowd_valid: Tensor | None = None  # (N, M) bool

    def crowd_ioa(self, boxes: Tensor) -> Tensor | None:
        """boxes (N, B, 4) or (B, 4) -> (N, B): the largest fraction of each box's area inside a crowd
        region of its image (0 without one); None when the batch has no crowd regions (nothing computed)."""
        if self.crowd_boxes is None:
            return None
        ioa = batched_ioa(self.crowd_boxes, boxes)  # (N, M, B)
        return ioa.masked_fill(~self.crowd_valid.unsqueeze(2), 0.0).amax(dim=1)


def pad_targets(targets: list[dict], device: torch.device) -> GroundTruth:
    """Loader targets (list of {"boxes" (K, 4), "labels" (K,)[, "crowd_boxes" (M, 4)]}, K and M may be 0)
    -> GroundTruth. Degenerate boxes (zero width or height) are marked invalid: they can overlap nothing."""
    boxes = [t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4) for t in targets]
    labels = [t["labels"].to(device=device, dtype=torch.int64).reshape(-1) for t in targets]
    counts = [b.shape[0] for b in boxes]  # host-side shapes, no sync
    k = max(counts, default=0)
    g = max(1, k)  # at least one (invalid) slot, so gathers by matched index always have a source
    n = len(targets)
    gt_boxes = torch.zeros((n, g, 4), device=device)
    gt_labels = torch.zeros((n, g), dtype=torch.int64, device=device)
    if k > 0:
        # pad_sequence: list of (K_i, ...) -> (N, max K_i, ...)
        gt_boxes[:, :k] = pad_sequence(boxes, batch_first=True)
        gt_labels[:, :k] = pad_sequence(labels, batch_first=True)
    valid = torch.arange(g, device=device) < torch.tensor(counts, device=device).unsqueeze(1)  # (N, G)
    valid &= (gt_boxes[..., 2] > gt_boxes[..., 0]) & (gt_boxes[..., 3] > gt_boxes[..., 1])
    crowd_boxes, crowd_valid = _pad_crowd(targets, device)
    return GroundTruth(gt_boxes, gt_labels, valid, crowd_boxes, crowd_valid)


def _pad_crowd(targets: list[dict], device: torch.device) -> tuple[Tensor | None, Tensor | None]:
    """(N, M, 4) crowd regions + (N, M) validity, or (None, None) when no target has any (host-side shapes,
    no sync)."""
    crowd = [t.get("crowd_boxes") for t in targets]
    crowd = [torch.zeros((0, 4)) if c is None else c.reshape(-1, 4) for c in crowd]
    counts = [c.shape[0] for c in crowd]
    if max(counts, default=0) == 0:
        return None, None
    boxes = pad_sequence([c.to(device=device, dtype=torch.float32) for c in crowd], batch_first=True)  # (N, M, 4)
    valid = torch.arange(boxes.shape[1], device=device) < torch.tensor(counts, device=device).unsqueeze(1)
    return boxes, valid
