"""Box helpers shared by the RPN, the RoI heads and post-processing.

Boxes are continuous pixel ``(x1, y1, x2, y2)`` (width = x2 - x1, no +1), the project-wide convention.
Every helper here works on any number of leading batch dimensions.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate

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
    # sort by (group, position): unique keys make any sort stable (ONNX's TopK has no stable mode)
    order = torch.argsort(groups * groups.numel() + torch.arange(groups.numel(), device=groups.device))
    sorted_groups = groups[order]
    counts = torch.bincount(groups, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts  # first position of each group in the sorted sequence
    rank = torch.arange(groups.numel(), device=groups.device) - starts[sorted_groups]
    return order, rank


_NMS_POOL: ThreadPoolExecutor | None = None


def _nms_pool() -> ThreadPoolExecutor:
    global _NMS_POOL
    if _NMS_POOL is None:
        _NMS_POOL = ThreadPoolExecutor(max_workers=torch.get_num_threads(), thread_name_prefix="fpn-nms")
    return _NMS_POOL


def segment_nms(boxes: Tensor, scores: Tensor, segment_sizes: list[int], iou_thresh: float) -> Tensor:
    """NMS within contiguous segments of ``boxes`` (M, 4) / ``scores`` (M,) of the given sizes: the same
    kept set and order as ``batched_nms`` with one group per segment, (kept indices, best score first).

    For the CPU, where torchvision's NMS kernel runs on one core: the segments are spread over
    ``torch.get_num_threads()`` threads (the kernel releases the GIL; each segment's result does not
    depend on the thread), and each group is a slice rather than a mask over all M boxes as in
    ``batched_nms``. On CUDA use ``batched_nms`` (one kernel over offset boxes)."""
    from torchvision.ops import nms

    if sum(segment_sizes) != boxes.shape[0]:
        raise ValueError(f"segment sizes add up to {sum(segment_sizes)}, not to the {boxes.shape[0]} boxes")
    starts = accumulate(segment_sizes, initial=0)
    jobs = [(start, size) for start, size in zip(starts, segment_sizes) if size > 0]
    if not jobs:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)

    def one(job: tuple[int, int]) -> Tensor:
        start, size = job
        return nms(boxes[start : start + size], scores[start : start + size], iou_thresh) + start

    parallel = len(jobs) > 1 and torch.get_num_threads() > 1
    keep = torch.cat(list(_nms_pool().map(one, jobs)) if parallel else [one(job) for job in jobs])
    return keep[scores[keep].argsort(descending=True, stable=True)]


def offset_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_thresh: float, max_coordinate: Tensor) -> Tensor:
    """NMS within groups by shifting each group's boxes out of the others' reach (torchvision's "coordinate
    trick") and one ``nms`` call: the kept indices, best score first. ``max_coordinate``: a scalar tensor no box
    coordinate exceeds (e.g. the largest image side, for boxes clipped to their image).

    Unlike ``batched_nms`` it has no branch on the number of boxes, so it traces into one graph
    (``torch.export``, ONNX NonMaxSuppression) whatever the number of boxes, zero included."""
    from torchvision.ops import nms

    offsets = groups.to(boxes.dtype) * (max_coordinate.to(boxes.dtype) + 1)  # (M,)
    return nms(boxes + offsets[:, None], scores, iou_thresh)


def grouped_nms(
    boxes: Tensor, scores: Tensor, segment_sizes: list[int], iou_thresh: float, use_batched: bool | None = None,
    max_coordinate: Tensor | None = None,
) -> Tensor:
    """NMS within contiguous segments (see ``segment_nms``): torchvision's ``batched_nms`` (one kernel over
    boxes offset per group) on CUDA, ``segment_nms`` on a CPU; ``use_batched`` forces one of them (tests).
    Inside ``torch.export`` (ONNX export) it is ``offset_nms``, which needs ``max_coordinate``."""
    from torchvision.ops import batched_nms

    if torch.compiler.is_exporting():
        # (M,) segment of each box, from sizes that may be symbolic (no tensor of them can be made)
        group = torch.cat([torch.full((size,), i, device=boxes.device) for i, size in enumerate(segment_sizes)])
        return offset_nms(boxes, scores, group, iou_thresh, max_coordinate)
    if use_batched if use_batched is not None else boxes.is_cuda:
        group = torch.repeat_interleave(  # (M,) segment of each box; output_size avoids a host sync
            torch.arange(len(segment_sizes), device=boxes.device),
            torch.tensor(segment_sizes, device=boxes.device),
            output_size=boxes.shape[0],
        )
        return batched_nms(boxes, scores, group, iou_thresh)
    return segment_nms(boxes, scores, segment_sizes, iou_thresh)
