"""Box helpers shared by the RPN, the RoI heads and post-processing.

Boxes are continuous pixel ``(x1, y1, x2, y2)`` (width = x2 - x1, no +1), the project-wide convention.
Every helper here works on any number of leading batch dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) -> (...); degenerate boxes have area 0, never negative."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _batched_intersection(a: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection area of every box of ``a`` with every box of ``boxes``, per image.

    a: (N, M, 4); boxes: (N, B, 4) or (B, 4) (shared by all images, e.g. anchors) -> ((N, M, B) areas,
    ``boxes`` as (N or 1, B, 4)).
    """
    if boxes.dim() == 2:
        boxes = boxes.unsqueeze(0)  # (1, B, 4), broadcast over images
    r = a.unsqueeze(2)  # (N, M, 1, 4)
    b = boxes.unsqueeze(1)  # (N or 1, 1, B, 4)
    iw = (torch.minimum(r[..., 2], b[..., 2]) - torch.maximum(r[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(r[..., 3], b[..., 3]) - torch.maximum(r[..., 1], b[..., 1])).clamp(min=0)
    return iw * ih, boxes


def batched_iou(gt: Tensor, boxes: Tensor) -> Tensor:
    """IoU of every ground truth with every box, per image.

    gt: (N, G, 4); boxes: (N, B, 4) or (B, 4) (shared by all images, e.g. anchors) -> (N, G, B).
    Pairs with an empty union get IoU 0.
    """
    inter, boxes = _batched_intersection(gt, boxes)  # (N, G, B)
    union = box_area(gt).unsqueeze(2) + box_area(boxes).unsqueeze(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def batched_ioa(regions: Tensor, boxes: Tensor) -> Tensor:
    """Intersection over the box's area ("how much of the box lies inside the region"), per image.

    regions: (N, M, 4); boxes: (N, B, 4) or (B, 4) -> (N, M, B). Empty boxes get 0.
    """
    inter, boxes = _batched_intersection(regions, boxes)  # (N, M, B)
    area = box_area(boxes).unsqueeze(1)  # (N or 1, 1, B)
    return torch.where(area > 0, inter / area.clamp(min=1e-12), torch.zeros_like(inter))


def clip_boxes(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Clip boxes to their image. boxes: (N, ..., 4); image_sizes: (N, 2) float (h, w) -> (N, ..., 4)."""
    # (N, 2) -> (N, 1, ..., 1) per coordinate, so it broadcasts over the boxes' middle dimensions
    shape = (image_sizes.shape[0],) + (1,) * (boxes.dim() - 2)
    h = image_sizes[:, 0].reshape(shape)
    w = image_sizes[:, 1].reshape(shape)
    x1 = torch.minimum(boxes[..., 0].clamp(min=0), w)
    y1 = torch.minimum(boxes[..., 1].clamp(min=0), h)
    x2 = torch.minimum(boxes[..., 2].clamp(min=0), w)
    y2 = torch.minimum(boxes[..., 3].clamp(min=0), h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def boxes_big_enough(boxes: Tensor, min_size: float) -> Tensor:
    """(..., 4) -> bool (...): width and height both >= min_size (and > 0)."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return (w >= min_size) & (h >= min_size) & (w > 0) & (h > 0)


def rank_within_groups(groups: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """For a 1-D sequence already in priority order (e.g. NMS output sorted by score), the position of
    each element among the elements of its own group, without a Python loop or host sync.

    groups: (K,) int64 in [0, num_groups) -> (order, rank): ``order`` (K,) a stable permutation that
    groups elements by group (priority order kept inside a group), ``rank`` (K,) the rank of
    ``groups[order]`` inside its group (0 = best).
    """
    # sort by (group, position): unique keys make any sort stable
    position = torch.arange(groups.numel(), device=groups.device)
    order = torch.argsort(groups * groups.numel() + position)
    sorted_groups = groups[order]
    # no bincount, which reads its maximum on the host on CUDA
    starts = torch.searchsorted(sorted_groups, sorted_groups)  # first position of each element's group
    return order, position - starts
