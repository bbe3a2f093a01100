"""The operations with several implementations, and the one place that chooses among them.

Each module holds one operation, its plain reference first and the fast variants beside it, each tested against
the reference (``tests/model/ops``): ``nms`` (NMS within groups, a keep mask), ``roi_pool`` (multi-level
RoIAlign), ``frozen_bn`` (a convolution and its norm), ``triton_nms`` (the Triton kernel, a custom op).

``choose_ops`` maps (device type, purpose, the config's choices, whether Triton runs here) to implementations,
once, when the model is built; the modules only call what they were given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fpn.config import NMS_IMPLS, POOL_IMPLS
from fpn.model.ops import frozen_bn, roi_pool
from fpn.model.ops.nms import NMS, BatchedNMS, OffsetNMS, OpaqueNMS, ThreadedNMS, TritonNMS, triton_problem

PURPOSES = ("train", "infer", "export")
# the names runtime.pool_impl / runtime.nms_impl take, declared with the config ("auto": by device, below);
# NMS: segment = threads per group, offset = offset torchvision calls, mask = keep masks
POOL_CHOICES, NMS_CHOICES = POOL_IMPLS, NMS_IMPLS

POOLS = {"torchvision": roi_pool.per_level_roi_align, "by_mask": roi_pool.by_mask_roi_align,
         "sparse": roi_pool.sparse_roi_align, "packed": roi_pool.packed_roi_align}  # fmt: skip


@dataclass(frozen=True)
class Ops:
    """The chosen implementations: NMS of the RPN's proposals and of the detections (``fpn.model.ops.nms``
    interface), the multi-level RoIAlign (``fpn.model.ops.roi_pool``), a backbone convolution and its frozen
    BatchNorm (``fpn.model.ops.frozen_bn``), whether anchors are cached per input size, the torch.compile
    backend for the training forward + losses and the inference batch ("" eager) and whether they compile as one
    graph each, and whether the selection after NMS sorts stably."""

    proposal_nms: NMS
    detection_nms: NMS
    pool: Callable
    conv_norm: Callable
    cache_anchors: bool = True
    compile_backend: str = ""
    compile_fullgraph: bool = True  # the chosen ops trace without graph breaks (not so the poolers reading counts)
    stable_sort: bool = True  # the selection after NMS (``best_kept``); ONNX has none (its TopK keeps index order)


def choose_ops(device: torch.device | str = "cpu", purpose: str = "train", *, pool: str = "auto", nms: str = "auto",
               fuse_frozen_bn: bool = True, compile: str = "", sampling_ratio: int = 2, aligned: bool = True,
               triton: bool | None = None) -> Ops:  # fmt: skip
    """The implementations for a model on ``device`` used for ``purpose`` ("train", "infer", "export").

    "auto" rules: a CPU takes NMS in threads per group for proposals, ``batched_nms`` on the gathered candidates
    for detections, and the sparse pooler (with a fixed ``sampling_ratio``); CUDA takes the Triton keep masks (when
    the kernel runs here; else offset NMS) and the packed pooler (either alignment). An exported graph
    takes one offset NMS call each, the by-mask pooler, no anchor cache and no torch.compile. ``triton``: None
    asks the machine (once per process, on CUDA only); True / False force it (tests: Triton's interpreter on a
    CPU). ``compile`` (a torch.compile backend): the NMS with data-dependent sizes (every one but Triton's) and the
    sparse pooler become opaque custom ops (``OpaqueNMS``, ``opaque_sparse_roi_align``: the same results), so that
    the model traces as one graph (fullgraph); the per-level and by-mask poolers read counts and do not.
    ValueError for a name not among ``POOL_CHOICES`` / ``NMS_CHOICES`` or a pooler the settings exclude."""
    device_type = torch.device(device).type
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    if pool not in POOL_CHOICES:
        raise ValueError(f"pool must be one of {', '.join(POOL_CHOICES)}, got {pool!r}")
    if nms not in NMS_CHOICES:
        raise ValueError(f"nms must be one of {', '.join(NMS_CHOICES)}, got {nms!r}")
    if pool == "sparse" and sampling_ratio <= 0:
        raise ValueError("pool=sparse needs a fixed sampling ratio > 0")
    if purpose == "export":  # one graph for any number of boxes and any RoI distribution; nothing cached
        return Ops(OffsetNMS(max_boxes=None), OffsetNMS(gather_valid=True, max_boxes=None),
                   roi_pool.by_mask_roi_align, frozen_bn.plain_conv_norm, cache_anchors=False,
                   stable_sort=False)  # fmt: skip

    cuda = device_type == "cuda"
    if pool == "auto":
        if device_type == "cpu" and sampling_ratio > 0:
            pool = "sparse"
        elif cuda:  # either alignment (converted torchvision weights pool unaligned)
            pool = "packed"
        else:
            pool = "torchvision"
    if nms == "auto":
        nms = "mask" if cuda else "segment"
    use_triton = nms == "mask" and (triton if triton is not None else cuda and triton_problem(device_type) is None)
    offset = OffsetNMS()
    candidates = OffsetNMS(gather_valid=True, max_boxes=None) if cuda else BatchedNMS()  # few boxes above the score
    if nms == "segment":
        proposal_nms = ThreadedNMS()
    elif use_triton:
        proposal_nms = TritonNMS(offset)  # groups too large for the kernel take the offset calls
    else:
        proposal_nms = offset
    detection_nms = TritonNMS(candidates) if use_triton else candidates
    pool_fn = POOLS[pool]
    if compile:  # one graph: what has data-dependent sizes inside becomes an opaque op of fixed-shape results
        proposal_nms, detection_nms = _opaque(proposal_nms), _opaque(detection_nms)
        if pool == "sparse":
            pool_fn = roi_pool.opaque_sparse_roi_align
    conv_norm = frozen_bn.folded_conv_norm if fuse_frozen_bn else frozen_bn.plain_conv_norm
    # compiled: no anchor cache (a cache miss, then a hit, would be two graphs per input shape; the graph makes them)
    return Ops(proposal_nms, detection_nms, pool_fn, conv_norm, cache_anchors=not compile, compile_backend=compile,
               compile_fullgraph=pool in ("sparse", "packed"))  # fmt: skip


def _opaque(nms: NMS) -> NMS:
    """``nms`` as torch.compile traces it in one graph: Triton's kernel is a custom op already (its fallback for
    large groups is wrapped), the others are wrapped."""
    if isinstance(nms, TritonNMS):
        return TritonNMS(OpaqueNMS(nms.fallback))
    return OpaqueNMS(nms)


__all__ = ["NMS_CHOICES", "POOL_CHOICES", "PURPOSES", "Ops", "choose_ops"]
