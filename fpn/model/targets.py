"""Ground truth of a batch, padded to one tensor per field so matching runs batched."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence


@dataclass
class GroundTruth:
    """N images, G = max(1, most objects in an image) slots; padding slots have valid False,
    box 0 and label 0."""

    boxes: Tensor  # (N, G, 4) float32 continuous xyxy, network-input pixels
    labels: Tensor  # (N, G) int64 in 1..C
    valid: Tensor  # (N, G) bool


def pad_targets(targets: list[dict], device: torch.device) -> GroundTruth:
    """Loader targets (list of {"boxes" (K, 4), "labels" (K,)}, K may be 0) -> GroundTruth.
    Degenerate boxes (zero width or height) are marked invalid: they can overlap nothing."""
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
    return GroundTruth(boxes=gt_boxes, labels=gt_labels, valid=valid)
