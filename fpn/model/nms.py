"""Non-maximum suppression within groups (RPN: image x level; detections: image x class).

Two shapes of result:

* kept indices, best score first (``grouped_nms``, ``segment_nms``, ``offset_nms``): the number of kept boxes is
  data-dependent, so on CUDA each call makes the host wait for the GPU (one call per ``OFFSET_NMS_MAX_BOXES``
  boxes, never torchvision's per-group loop);
* a keep mask of fixed shape (``nms_keep_mask``): on CUDA one Triton kernel (``fpn.model.triton_nms``) and no host
  sync at all; elsewhere, or without Triton, the same mask from ``offset_nms``.

All of them keep what ``torchvision.ops.nms`` keeps within each group (tests compare them).
"""

from __future__ import annotations

import functools
import warnings
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate

import torch
from torch import Tensor

from fpn.structures import to_device

# boxes per torchvision ``nms`` call in the offset path: its CUDA kernel builds a (M, M / 64) bit mask, so one call
# over every group of a large batch would cost more than a few calls (torchvision's own batched_nms loops over
# groups above 20,000 coordinates, its newer releases above 100,000)
OFFSET_NMS_MAX_BOXES = 25_000

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
    ``batched_nms``. On CUDA use ``chunked_offset_nms``."""
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


def chunked_offset_nms(boxes: Tensor, scores: Tensor, segment_sizes: list[int], iou_thresh: float,
                       max_coordinate: Tensor, max_boxes: int = OFFSET_NMS_MAX_BOXES) -> Tensor:  # fmt: skip
    """NMS within contiguous segments (see ``segment_nms``) for a GPU: whole segments packed into ``offset_nms``
    calls of at most ``max_boxes`` boxes (a larger segment alone), kept indices best score first. One host sync
    per call, where torchvision's ``batched_nms`` has two per group above its size threshold."""
    calls, start, size = [], 0, 0  # (first box, number of boxes, first segment, number of segments) per call
    first_segment = 0
    for i, n in enumerate(segment_sizes):
        if size and size + n > max_boxes:
            calls.append((start, size, first_segment, i - first_segment))
            start, size, first_segment = start + size, 0, i
        size += n
    calls.append((start, size, first_segment, len(segment_sizes) - first_segment))
    keep = []
    for start, size, seg0, nseg in calls:
        if size == 0:
            continue
        # (size,) segment index of each box, made on the host from host-side sizes and copied without waiting
        group = torch.arange(nseg).repeat_interleave(torch.tensor(segment_sizes[seg0:seg0 + nseg]), output_size=size)
        chunk = slice(start, start + size)
        keep.append(offset_nms(boxes[chunk], scores[chunk], to_device(group, boxes.device), iou_thresh,
                               max_coordinate) + start)  # fmt: skip
    if not keep:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    keep = torch.cat(keep)
    return keep if len(keep) == 1 else keep[scores[keep].argsort(descending=True, stable=True)]


def grouped_nms(
    boxes: Tensor, scores: Tensor, segment_sizes: list[int], iou_thresh: float, use_offsets: bool | None = None,
    max_coordinate: Tensor | None = None,
) -> Tensor:
    """NMS within contiguous segments (see ``segment_nms``): ``chunked_offset_nms`` on CUDA, ``segment_nms`` on a
    CPU; ``use_offsets`` forces one of them (tests). Inside ``torch.export`` (ONNX export) it is one
    ``offset_nms``. The offset paths need ``max_coordinate``."""
    if torch.compiler.is_exporting():
        # (M,) segment of each box, from sizes that may be symbolic (no tensor of them can be made)
        group = torch.cat([torch.full((size,), i, device=boxes.device) for i, size in enumerate(segment_sizes)])
        return offset_nms(boxes, scores, group, iou_thresh, max_coordinate)
    if use_offsets if use_offsets is not None else boxes.is_cuda:
        return chunked_offset_nms(boxes, scores, segment_sizes, iou_thresh, max_coordinate)
    return segment_nms(boxes, scores, segment_sizes, iou_thresh)


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether Triton can be imported (it comes with torch's CUDA builds on Linux)."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


_TRITON_FAILED: list[str] = []  # why the kernel could not run here (then the plain path serves)


def use_triton_kernel(device: torch.device, group_size: int) -> bool:
    """Whether ``nms_keep_mask`` runs the Triton kernel: on CUDA, with Triton, for groups that fit it, unless it
    failed to compile here before."""
    return device.type == "cuda" and group_size <= 4096 and triton_available() and not _TRITON_FAILED


def _triton_keep(sorted_boxes: Tensor, counts: Tensor, iou_thresh: float) -> Tensor | None:
    """The kernel's keep mask, or None (with one warning) when Triton cannot compile or launch it on this machine:
    a toolchain problem must cost speed, not the run."""
    from fpn.model.triton_nms import nms_sorted_groups

    try:
        return nms_sorted_groups(sorted_boxes, counts, iou_thresh)
    except Exception as e:  # compilation or launch (e.g. no usable ptxas): fall back for the rest of the process
        _TRITON_FAILED.append(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
        warnings.warn(f"fpn: the Triton NMS kernel failed ({_TRITON_FAILED[0]}); using torchvision's nms, which "
                      "waits for the GPU once per call", RuntimeWarning, stacklevel=3)  # fmt: skip
        return None


def nms_keep_mask(boxes: Tensor, scores: Tensor, valid: Tensor, iou_thresh: float, max_coordinate: Tensor,
                  use_triton: bool | None = None) -> Tensor:  # fmt: skip
    """Which boxes NMS keeps, for G independent groups of K boxes: boxes (G, K, 4), scores (G, K), valid (G, K)
    bool (an invalid box is never kept and suppresses nothing) -> keep (G, K) bool. ``max_coordinate``: a scalar
    tensor no valid box coordinate exceeds.

    ``use_triton`` (None: on CUDA when Triton is installed and K fits the kernel): the Triton kernel, no host
    sync; else ``offset_nms`` over the valid boxes (two host syncs: their number and the kept ones')."""
    g, k = scores.shape
    if use_triton is None:
        use_triton = use_triton_kernel(boxes.device, k)
    # each group's boxes best first, the valid ones ahead of the others (score -inf, after every finite score)
    ranked = torch.where(valid, scores, torch.full_like(scores, float("-inf")))
    order = ranked.argsort(dim=1, descending=True, stable=True)  # (G, K)
    sorted_boxes = boxes.gather(1, order.unsqueeze(2).expand(g, k, 4))  # (G, K, 4)
    keep_sorted = None
    if use_triton:  # the valid boxes lead each sorted group: their count is all the kernel needs of ``valid``
        keep_sorted = _triton_keep(sorted_boxes, valid.sum(dim=1), iou_thresh)
    if keep_sorted is None:
        sorted_valid = valid.gather(1, order)
        index = sorted_valid.reshape(-1).nonzero().squeeze(1)  # (V,) flat positions of the valid boxes
        group = index // max(k, 1)
        kept = offset_nms(sorted_boxes.reshape(-1, 4)[index], ranked.gather(1, order).reshape(-1)[index], group,
                          iou_thresh, max_coordinate)  # fmt: skip
        keep_sorted = torch.zeros(g * k, dtype=torch.bool, device=boxes.device)
        keep_sorted[index[kept]] = True
        keep_sorted = keep_sorted.view(g, k)
    return torch.zeros_like(valid).scatter_(1, order, keep_sorted)  # back to the callers' order
