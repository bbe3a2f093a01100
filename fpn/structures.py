"""Record types shared by the data pipeline and the model (detectron2's "structures"): a batch's ground truth padded
to one tensor per field, and host-to-device copies that do not block.

The loader's :class:`~fpn.data.loader.Collator` pads a batch's targets on the host (in a worker process), the
DataLoader's pinning thread page-locks the few padded tensors (:meth:`GroundTruth.pin_memory`), and the trainer
copies them to the GPU without waiting (:meth:`GroundTruth.to`): no per-image copies, no host sync. The model
also accepts the per-image target dicts and pads them itself (:func:`pad_targets`), as its API promises.

Crowd regions (COCO ``iscrowd=1``, the loader's ``crowd_boxes``) are kept apart from the objects: they are no
ground truth to match, but anchors and proposals lying mostly inside one are ignored by the matchers (neither
positive nor background), see :func:`fpn.model.targets.crowd_ioa`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence


def to_device(tensor: Tensor, device: torch.device | str, staging: "Staging | None" = None) -> Tensor:
    """``tensor`` on ``device`` without blocking the host: a host tensor bound for a GPU is page-locked first, so
    that the copy is asynchronous (``torch.tensor(..., device="cuda")`` or a copy from pageable memory waits for the
    GPU to finish its queue): into one of ``staging``'s reused buffers when given, else a page-locked copy made
    for this call."""
    device = torch.device(device)
    if staging is not None:
        return staging.to_device(tensor, device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)


class Staging:
    """Page-locked host buffers reused for host-to-device copies: a ring of ``depth`` buffers per (shape, dtype),
    the ``max_shapes`` most recently used shapes kept. Owned by a loader (``fpn.data.loader``), so a training step
    makes no page-locked temporary (and with padded-size buckets and a fixed ground-truth capacity, the few
    shapes of a run each get their buffers once).

    A buffer is refilled only after the copy that last read it has finished (a CUDA event recorded with that
    copy, ``depth`` uses earlier): the host runs at most ``depth`` copies of one shape ahead of the device, and
    waits for nothing else. Copies to the CPU (or from a device tensor) are plain ``tensor.to(device)``: CPU
    runs are unchanged."""

    def __init__(self, depth: int = 2, max_shapes: int = 32) -> None:
        if depth < 1 or max_shapes < 1:
            raise ValueError(f"staging needs depth >= 1 and max_shapes >= 1, got {depth}, {max_shapes}")
        self.depth, self.max_shapes = depth, max_shapes
        self._rings: dict[tuple, list[list]] = {}  # (shape, dtype) -> [[buffer, event or None], ...]; LRU order
        self._turn: dict[tuple, int] = {}
        self.allocations = 0  # page-locked buffers made so far

    def to_device(self, tensor: Tensor, device: torch.device | str) -> Tensor:
        device = torch.device(device)
        if device.type != "cuda" or tensor.device.type != "cpu":
            return tensor.to(device)
        key = (tuple(tensor.shape), tensor.dtype)
        ring = self._rings.pop(key, None)
        if ring is None:
            ring, self._turn[key] = [], 0
            if len(self._rings) >= self.max_shapes:  # forget the least recently used shape
                old = next(iter(self._rings))
                del self._rings[old], self._turn[old]
        self._rings[key] = ring  # now the most recently used
        slot = self._turn[key]
        self._turn[key] = (slot + 1) % self.depth
        if slot == len(ring):
            ring.append([torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True), None])
            self.allocations += 1
        buffer, done = ring[slot]
        if done is not None:
            done.synchronize()  # the copy from this buffer, depth uses ago
        buffer.copy_(tensor)
        out = buffer.to(device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        ring[slot][1] = event
        return out


@dataclass
class GroundTruth:
    """N images, G = max(1, most objects in an image) slots; padding slots have valid False, box 0 and label 0.
    Never an empty tensor (an empty tensor has no memory to page-lock), so the whole of it pins."""

    boxes: Tensor  # (N, G, 4) float32 continuous xyxy, network-input pixels
    labels: Tensor  # (N, G) int64 in 1..C
    valid: Tensor  # (N, G) bool
    crowd_boxes: Tensor | None = None  # (N, M, 4) crowd regions, M >= 1; None when no image of the batch has one
    crowd_valid: Tensor | None = None  # (N, M) bool

    def _map(self, fn) -> "GroundTruth":
        return replace(self, **{f.name: fn(v) for f in fields(self) if (v := getattr(self, f.name)) is not None})

    def to(self, device: torch.device | str, non_blocking: bool = False, staging: Staging | None = None) -> "GroundTruth":
        if staging is not None:
            return self._map(lambda t: staging.to_device(t, device))
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "GroundTruth":
        """Called by ``DataLoader(pin_memory=True)`` (through ``Batch.pin_memory``) in its pinning thread."""
        return self._map(lambda t: t.pin_memory())

    @property
    def device(self) -> torch.device:
        return self.boxes.device


def pad_targets(
    targets: list[dict], device: torch.device | str, capacity: int = 0, crowd_capacity: int = 0
) -> GroundTruth:
    """Per-image targets (list of {"boxes" (K, 4), "labels" (K,)[, "crowd_boxes" (M, 4)]}, K and M may be 0)
    -> GroundTruth on ``device``. Degenerate boxes (zero width or height) are marked invalid: they can overlap
    nothing. Padding happens where the targets are (the host, as the loader gives them: then one non-blocking
    copy per field, ``to_device``); nothing reads a device value, so there is no host sync.

    ``capacity`` G > 0: G object slots whatever the batch holds (the loader's ``data.max_objects``: one shape per
    run); 0: the batch's most. ``crowd_capacity`` M > 0: crowd regions always present with M slots; 0: the
    batch's most, None when no image has one. A target with more than the capacity is a ValueError. The
    padding slots are invalid: the model's matchers never match them (the same labels as with tight padding)."""
    device = torch.device(device)
    where = targets[0]["boxes"].device if targets else torch.device("cpu")
    boxes = [t["boxes"].to(device=where, dtype=torch.float32).reshape(-1, 4) for t in targets]
    labels = [t["labels"].to(device=where, dtype=torch.int64).reshape(-1) for t in targets]
    counts = [b.shape[0] for b in boxes]  # host-side shapes, no sync
    k = max(counts, default=0)
    if capacity and k > capacity:
        raise ValueError(f"an image has {k} objects, more than the ground truth's capacity of {capacity}")
    g = capacity or max(1, k)  # at least one (invalid) slot, so gathers by matched index always have a source
    n = len(targets)
    gt_boxes = torch.zeros((n, g, 4), device=where)
    gt_labels = torch.zeros((n, g), dtype=torch.int64, device=where)
    if k > 0:
        # pad_sequence: list of (K_i, ...) -> (N, max K_i, ...)
        gt_boxes[:, :k] = pad_sequence(boxes, batch_first=True)
        gt_labels[:, :k] = pad_sequence(labels, batch_first=True)
    valid = to_device(_slots_filled(counts, g), where)  # (N, G), built on the host from host-side counts
    valid &= (gt_boxes[..., 2] > gt_boxes[..., 0]) & (gt_boxes[..., 3] > gt_boxes[..., 1])
    crowd_boxes, crowd_valid = _pad_crowd(targets, where, crowd_capacity)
    gt = GroundTruth(gt_boxes, gt_labels, valid, crowd_boxes, crowd_valid)
    return gt if where == device else gt._map(lambda t: to_device(t, device))


def _slots_filled(counts: list[int], slots: int) -> Tensor:
    """(N, slots) bool on the host: slot j of image i holds one of its counts[i] entries."""
    return torch.arange(slots) < torch.tensor(counts, dtype=torch.int64).reshape(-1, 1)


def _pad_crowd(targets: list[dict], device: torch.device, capacity: int = 0) -> tuple[Tensor | None, Tensor | None]:
    """(N, M, 4) crowd regions + (N, M) validity, or (None, None) when no target has any and no ``capacity``
    (host-side shapes, no sync)."""
    crowd = [t.get("crowd_boxes") for t in targets]
    crowd = [torch.zeros((0, 4), device=device) if c is None else c.reshape(-1, 4) for c in crowd]
    counts = [c.shape[0] for c in crowd]
    most = max(counts, default=0)
    if most == 0 and not capacity:
        return None, None
    if capacity and most > capacity:
        raise ValueError(f"an image has {most} crowd regions, more than the capacity of {capacity}")
    m = capacity or most
    boxes = torch.zeros((len(crowd), m, 4), device=device)
    if most > 0:
        boxes[:, :most] = pad_sequence([c.to(device=device, dtype=torch.float32) for c in crowd], batch_first=True)
    return boxes, to_device(_slots_filled(counts, m), device)
