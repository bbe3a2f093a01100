"""Non-maximum suppression within groups, one interface, several implementations.

``keep = nms(boxes (N, K, 4), scores (N, K), valid (N, K) bool, group_sizes, iou_thresh, max_coordinate)`` ->
keep (N, K) bool. Each image's K boxes are ``len(group_sizes)`` groups laid out one after the other (the same
sizes for every image; RPN: levels, detections: classes); a box competes only with its own image and group. An
invalid box is never kept and suppresses nothing. ``max_coordinate``: a scalar tensor no valid box coordinate
exceeds (boxes are clipped to their image). Every implementation keeps what ``torchvision.ops.nms`` keeps on the
valid boxes of each group (``ReferenceNMS``; tests compare the others with it).

* ``ReferenceNMS``: torchvision's ``nms`` per (image, group), a plain loop.
* ``ThreadedNMS``: the same calls spread over CPU threads (torchvision's CPU kernel runs on one core and releases
  the GIL).
* ``OffsetNMS``: each group shifted out of the others' reach (torchvision's "coordinate trick") and few ``nms``
  calls (one host sync each on CUDA, never torchvision's per-group loop); with ``max_boxes=None`` one call that
  traces into an exported graph (ONNX NonMaxSuppression) whatever the number of boxes.
* ``BatchedNMS``: torchvision's ``batched_nms`` on the valid boxes gathered (the CPU's detections).
* ``TritonNMS``: a Triton kernel writing the keep mask (``fpn.model.ops.triton_nms``): no host sync.
* ``OpaqueNMS``: one of the above behind the custom op ``torch.ops.fpn.nms_keep`` (a fake gives the mask's fixed
  shape), so that ``torch.compile(fullgraph=True)`` traces through its data-dependent sizes and thread pool; the
  same keep mask as the implementation it wraps.

``best_kept`` is the one selection after NMS: each image's best kept boxes by score.
"""

from __future__ import annotations

import functools
import warnings
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms as tv_nms


# boxes per torchvision ``nms`` call in ``OffsetNMS``: its CUDA kernel builds a (M, M / 64) bit mask, so one call
# over every group of a large batch would cost more than a few calls (torchvision's own batched_nms loops over
# groups above 20,000 coordinates, its newer releases above 100,000)
OFFSET_NMS_MAX_BOXES = 25_000
MAX_TRITON_GROUP = 4096  # boxes per group the Triton kernel holds in registers; larger groups take its fallback


def _groups(group_sizes: list[int]) -> list[tuple[int, int]]:
    """(start, size) of each group along K."""
    return list(zip(accumulate(group_sizes, initial=0), group_sizes))


def _group_index(group_sizes: list[int], device: torch.device) -> Tensor:
    """(K,) group of each position, from sizes that may be symbolic (torch.export): no host tensor of them."""
    return torch.cat([torch.full((size,), g, device=device) for g, size in enumerate(group_sizes)])


def offset_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_thresh: float, max_coordinate: Tensor) -> Tensor:
    """NMS within ``groups`` (M,) of boxes (M, 4) / scores (M,) in one ``nms`` call, each group's boxes shifted
    out of the others' reach: the kept indices, best score first. No branch on the number of boxes, so it traces
    into one graph whatever the number, zero included."""
    offsets = groups.to(boxes.dtype) * (max_coordinate.to(boxes.dtype) + 1)  # (M,)
    return tv_nms(boxes + offsets[:, None], scores, iou_thresh)


class NMS:
    """The interface (module docstring). Stateless apart from what an implementation owns (a thread pool)."""

    def __call__(self, boxes: Tensor, scores: Tensor, valid: Tensor, group_sizes: list[int], iou_thresh: float,
                 max_coordinate: Tensor) -> Tensor:  # fmt: skip
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__


class ReferenceNMS(NMS):
    def __call__(self, boxes, scores, valid, group_sizes, iou_thresh, max_coordinate):
        keep = torch.zeros_like(valid)
        for i in range(scores.shape[0]):
            for start, size in _groups(group_sizes):
                index = valid[i, start:start + size].nonzero().squeeze(1) + start  # (V,) valid boxes of the group
                keep[i, index[tv_nms(boxes[i, index], scores[i, index], iou_thresh)]] = True
        return keep


class ThreadedNMS(NMS):
    """``ReferenceNMS``'s calls over ``torch.get_num_threads()`` threads (a group's result does not depend on the
    thread). The pool belongs to the object, made on first use; copies and pickles start without one."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None}

    def __call__(self, boxes, scores, valid, group_sizes, iou_thresh, max_coordinate):
        n, k = scores.shape
        jobs = [(i, start, size) for i in range(n) for start, size in _groups(group_sizes) if size > 0]

        def one(job: tuple[int, int, int]) -> Tensor:  # flat positions in (N*K) of the group's kept boxes
            i, start, size = job
            index = valid[i, start:start + size].nonzero().squeeze(1) + start
            return index[tv_nms(boxes[i, index], scores[i, index], iou_thresh)] + i * k

        if len(jobs) > 1 and torch.get_num_threads() > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=torch.get_num_threads(), thread_name_prefix="fpn-nms")
            kept = list(self._pool.map(one, jobs))
        else:
            kept = [one(job) for job in jobs]
        keep = torch.zeros(n * k, dtype=torch.bool, device=valid.device)
        if kept:
            keep[torch.cat(kept)] = True
        return keep.view(n, k)  # (N*K,) -> (N, K)


class OffsetNMS(NMS):
    """``offset_nms`` over whole groups. ``gather_valid``: on the valid boxes only (their number read on the host:
    few valid boxes, e.g. detections above the score threshold), else on all boxes, the invalid ones scored -inf
    (visited last: they suppress nothing). ``max_boxes``: boxes per call (whole groups; a larger group alone), or
    None: one call whose group sizes may be symbolic (torch.export)."""

    def __init__(self, gather_valid: bool = False, max_boxes: int | None = OFFSET_NMS_MAX_BOXES):
        self.gather_valid = gather_valid
        self.max_boxes = max_boxes

    def __repr__(self) -> str:
        return f"OffsetNMS(gather_valid={self.gather_valid}, max_boxes={self.max_boxes})"

    def __call__(self, boxes, scores, valid, group_sizes, iou_thresh, max_coordinate):
        n, k = scores.shape
        g = len(group_sizes)
        flat_boxes, flat_valid = boxes.reshape(n * k, 4), valid.reshape(n * k)  # (N, K, ...) -> (N*K, ...)
        keep = torch.zeros(n * k, dtype=torch.bool, device=valid.device)
        # (N*K,) group of each box: image-major, then its group in the image
        group = (_group_index(group_sizes, boxes.device)[None, :] + g * torch.arange(n, device=boxes.device)[:, None])
        group = group.reshape(n * k)  # (N, K) -> (N*K,)
        if self.gather_valid:
            index = flat_valid.nonzero().squeeze(1)  # (V,) data-dependent: the host waits
            kept = offset_nms(flat_boxes[index], scores.reshape(n * k)[index], group[index], iou_thresh,
                              max_coordinate)  # fmt: skip
            keep[index[kept]] = True
            return keep.view(n, k)
        ranked = torch.where(flat_valid, scores.reshape(n * k), float("-inf"))
        flat_boxes = torch.where(flat_valid[:, None], flat_boxes, 0.0)  # NaN-free
        if self.max_boxes is None:
            keep[offset_nms(flat_boxes, ranked, group, iou_thresh, max_coordinate)] = True
            return (keep & flat_valid).view(n, k)
        # whole groups packed into calls of at most max_boxes: (first box, boxes, first group) per call
        calls, start, size, first = [], 0, 0, 0
        for j, s in enumerate(list(group_sizes) * n):
            if size and size + s > self.max_boxes:
                calls.append((start, size, first))
                start, size, first = start + size, 0, j
            size += s
        calls.append((start, size, first))
        for start, size, first in calls:
            if size == 0:
                continue
            chunk = slice(start, start + size)
            # group numbers from 0 in each call, so that the offsets stay small
            kept = offset_nms(flat_boxes[chunk], ranked[chunk], group[chunk] - first, iou_thresh, max_coordinate)
            keep[kept + start] = True  # one host sync per call (the number kept)
        return (keep & flat_valid).view(n, k)


class BatchedNMS(NMS):
    """torchvision's ``batched_nms`` on the valid boxes (gathered: one host read of their number)."""

    def __call__(self, boxes, scores, valid, group_sizes, iou_thresh, max_coordinate):
        n, k = scores.shape
        index = valid.reshape(n * k).nonzero().squeeze(1)  # (V,) flat positions of the valid boxes
        group = _group_index(group_sizes, boxes.device).repeat(n)[index] + len(group_sizes) * (index // k)
        kept = batched_nms(boxes.reshape(n * k, 4)[index], scores.reshape(n * k)[index], group, iou_thresh)
        keep = torch.zeros(n * k, dtype=torch.bool, device=valid.device)
        keep[index[kept]] = True
        return keep.view(n, k)  # (N*K,) -> (N, K)


class TritonNMS(NMS):
    """The Triton kernel on each (image, group), its boxes sorted by score, the valid ones first; groups larger
    than ``MAX_TRITON_GROUP`` go to ``fallback``."""

    def __init__(self, fallback: NMS):
        self.fallback = fallback
        self._layouts: dict[tuple, tuple[Tensor, Tensor]] = {}  # per (group sizes, K, device): made there once

    def __repr__(self) -> str:
        return f"TritonNMS(fallback={self.fallback!r})"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_layouts": {}}  # device tensors: made again where the copy runs

    def _layout(self, group_sizes: list[int], k: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(slot (G, width): each group's positions in K, padded with K; real (K,): each box's position in
        G*width), made on the device (no host-to-device copy, which a CUDA graph could not replay) and kept."""
        key = (tuple(group_sizes), k, str(device))
        if key in self._layouts:
            return self._layouts[key]
        width = max(group_sizes, default=0)
        if not group_sizes:
            return torch.zeros((0, 0), dtype=torch.long, device=device), torch.zeros(0, dtype=torch.long, device=device)
        slot = torch.stack([torch.cat((torch.arange(start, start + size, device=device),
                                       torch.full((width - size,), k, device=device)))
                            for start, size in _groups(group_sizes)])  # fmt: skip
        real = torch.cat([torch.arange(g * width, g * width + size, device=device)
                          for g, size in enumerate(group_sizes)])  # fmt: skip
        if not torch.compiler.is_compiling():  # a traced call keeps them in its graph instead
            self._layouts[key] = (slot, real)
        return slot, real

    def __call__(self, boxes, scores, valid, group_sizes, iou_thresh, max_coordinate):
        from fpn.model.ops.triton_nms import nms_sorted_groups

        n, k = scores.shape
        g, width = len(group_sizes), max(group_sizes, default=0)
        if width > MAX_TRITON_GROUP:
            return self.fallback(boxes, scores, valid, group_sizes, iou_thresh, max_coordinate)
        # (N, K) -> (N*G, width): each group padded to the widest with slot K (an invalid box appended below)
        slot, real = self._layout(list(group_sizes), k, boxes.device)

        def grouped(t: Tensor, fill) -> Tensor:  # (N, K, ...) -> (N*G, width, ...), padding slots = fill
            padded = torch.cat((t, t.new_full((n, 1) + t.shape[2:], fill)), dim=1)  # (N, K+1, ...)
            return padded[:, slot].flatten(0, 1)

        group_valid = grouped(valid, False)
        ranked = torch.where(group_valid, grouped(scores, 0.0), float("-inf"))
        # each group's boxes best first, the valid ones ahead of the others (-inf, after every finite score)
        order = ranked.argsort(dim=1, descending=True, stable=True)  # (N*G, width)
        sorted_boxes = grouped(boxes, 0.0).gather(1, order.unsqueeze(2).expand(-1, -1, 4))  # (N*G, width, 4)
        keep_sorted = nms_sorted_groups(sorted_boxes, group_valid.sum(dim=1), float(iou_thresh))
        keep = torch.zeros_like(group_valid).scatter_(1, order, keep_sorted)  # back to the groups' order
        return keep.view(n, g * width)[:, real]  # (N*G, width) -> (N, G*width) -> (N, K)


# the implementations ``torch.ops.fpn.nms_keep`` runs, by name: a custom op takes no Python objects
_OPAQUE: dict[str, NMS] = {}


def _nms_keep(boxes: Tensor, scores: Tensor, valid: Tensor, group_sizes: list[int], iou_thresh: float,
              max_coordinate: Tensor, impl: str) -> Tensor:  # fmt: skip
    return _OPAQUE[impl](boxes, scores, valid, group_sizes, iou_thresh, max_coordinate).clone()  # never an alias


if hasattr(torch.library, "custom_op"):  # torch >= 2.4
    _nms_keep = torch.library.custom_op("fpn::nms_keep", mutates_args=())(_nms_keep)

    @_nms_keep.register_fake
    def _(boxes, scores, valid, group_sizes, iou_thresh, max_coordinate, impl):
        return torch.empty_like(valid)


class OpaqueNMS(NMS):
    """``inner`` as one opaque custom op (``torch.ops.fpn.nms_keep``): ``torch.compile`` sees a (N, K) bool mask
    from fixed-shape inputs, not the data-dependent sizes, ``nms`` calls and threads inside. Eager: ``inner``'s
    mask exactly."""

    def __init__(self, inner: NMS):
        self.inner = inner
        self.key = repr(inner)
        _OPAQUE.setdefault(self.key, inner)

    def __repr__(self) -> str:
        return f"OpaqueNMS({self.key})"

    def __setstate__(self, state: dict) -> None:  # a copy or an unpickled model registers its inner NMS again
        self.__dict__.update(state)
        _OPAQUE.setdefault(self.key, self.inner)

    def __call__(self, boxes, scores, valid, group_sizes, iou_thresh, max_coordinate):
        return _nms_keep(boxes, scores, valid, [int(g) for g in group_sizes], float(iou_thresh), max_coordinate,
                         self.key)  # fmt: skip


def best_kept(scores: Tensor, keep: Tensor, top_n: int, stable: bool = True) -> tuple[Tensor, Tensor]:
    """Each image's best ``top_n`` kept boxes: scores / keep (N, K) -> (index (N, top_n) into K, valid (N, top_n));
    best first, ties by position (a stable sort; ``stable=False`` for ONNX, which has no stable sort but whose TopK
    puts equal values in index order), rows with fewer kept boxes padded with invalid entries (index clamped into
    K: the caller masks them)."""
    n, k = scores.shape
    ranked = torch.where(keep, scores, float("-inf"))
    # top_n more -inf columns: the output has top_n columns however few boxes there are
    ranked = torch.cat((ranked, ranked.new_full((n, top_n), float("-inf"))), dim=1)  # (N, K + top_n)
    if stable:
        best = ranked.argsort(dim=1, descending=True, stable=True)[:, :top_n]  # (N, top_n)
    else:  # ONNX TopK
        best = ranked.topk(top_n, dim=1).indices  # (N, top_n)
    valid = ranked.gather(1, best) > float("-inf")
    return best.clamp(max=max(k - 1, 0)), valid


@functools.lru_cache(maxsize=None)
def triton_installed() -> bool:
    """Whether Triton can be imported (it comes with torch's CUDA builds on Linux)."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


@functools.lru_cache(maxsize=None)
def triton_problem(device_type: str) -> str | None:
    """Why the Triton kernel cannot run on ``device_type`` here (None: it can), found by compiling and running it
    once on two boxes, and said once (a warning). Asked when the ops are chosen: a toolchain problem costs speed,
    not the run."""
    if not triton_installed():
        return "Triton is not installed"
    try:
        from fpn.model.ops.triton_nms import nms_sorted_groups

        boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]]], device=device_type)
        keep = nms_sorted_groups(boxes, torch.tensor([2], device=device_type), 0.5).tolist()
        problem = None if keep == [[True, False]] else f"the kernel kept {keep} of two overlapping boxes"
    except Exception as e:  # compilation or launch (e.g. no usable ptxas)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        problem = f"{type(e).__name__}: {first}"
    if problem is not None:
        warnings.warn(f"fpn: the Triton NMS kernel cannot run here ({problem}); using torchvision's nms, which "
                      "waits for the GPU once per call", RuntimeWarning, stacklevel=3)  # fmt: skip
    return problem
