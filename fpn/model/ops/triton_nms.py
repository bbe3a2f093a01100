"""Greedy NMS of many small groups at once, in one Triton kernel that writes a keep mask: no host sync.

torchvision's ``nms`` returns the kept indices, whose number the host must read before anything can use them:
every call waits for the GPU. The RPN (groups: image x level) and the detections (groups: image x class) only need
to know which of a fixed set of boxes survive, so a mask of fixed shape serves them and the host never waits.

One program per group; the group's boxes (sorted by score, the ``count`` valid ones first) sit in registers, and
the kernel walks them in order: a box still alive is kept and removes every later box whose IoU with it exceeds
the threshold. The IoU is torchvision's arithmetic (``inter / (area_a + area_b - inter) > threshold`` in float32)
rounded as torchvision rounds it: an IEEE round-to-nearest division (``div_rn``; Triton's ``/`` on CUDA is the
approximate ``div.full.f32``) and no multiply-add fusion (``enable_fp_fusion=False``: a fused ``a * b + c`` rounds
once, not twice), so an IoU within an ulp of the threshold decides as there, and the kept set equals
``torchvision.ops.nms`` on the valid boxes of each group (tests compare them, on a CPU through Triton's
interpreter, ``TRITON_INTERPRET=1``; ``scripts/gpu_check.py`` on CUDA, against torchvision's CUDA kernel).

The kernel is the custom op ``torch.ops.fpn.nms_sorted_groups`` (with a fake implementation, so that
``torch.compile`` and ``torch.export`` trace through it). Import this module only where Triton is installed
(``fpn.model.ops.nms.triton_installed``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fpn.model.ops.nms import MAX_TRITON_GROUP


@triton.jit
def _nms_kernel(boxes_ptr, count_ptr, keep_ptr, group_size, iou_threshold, BLOCK: tl.constexpr):
    g = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    count = tl.load(count_ptr + g)
    inside = offs < count
    base = boxes_ptr + g * group_size * 4
    x1 = tl.load(base + offs * 4 + 0, mask=inside, other=0.0)
    y1 = tl.load(base + offs * 4 + 1, mask=inside, other=0.0)
    x2 = tl.load(base + offs * 4 + 2, mask=inside, other=0.0)
    y2 = tl.load(base + offs * 4 + 3, mask=inside, other=0.0)
    area = (x2 - x1) * (y2 - y1)
    alive = inside.to(tl.int32)  # 1: not suppressed (yet)
    keep = tl.zeros([BLOCK], dtype=tl.int32)
    for i in range(count):
        if tl.sum(tl.where(offs == i, alive, 0)) > 0:  # box i survived every better box: keep it
            keep = tl.where(offs == i, 1, keep)
            bx1 = tl.load(base + i * 4 + 0)
            by1 = tl.load(base + i * 4 + 1)
            bx2 = tl.load(base + i * 4 + 2)
            by2 = tl.load(base + i * 4 + 3)
            w = tl.maximum(tl.minimum(x2, bx2) - tl.maximum(x1, bx1), 0.0)
            h = tl.maximum(tl.minimum(y2, by2) - tl.maximum(y1, by1), 0.0)
            inter = w * h
            union = (bx2 - bx1) * (by2 - by1) + area - inter  # unfused at launch (enable_fp_fusion=False)
            iou = tl.math.div_rn(inter, union)  # torchvision's IEEE division, not the approximate one
            alive = tl.where((offs > i) & (iou > iou_threshold), 0, alive)
    tl.store(keep_ptr + g * group_size + offs, keep.to(tl.int8), mask=offs < group_size)


def _nms_sorted_groups(boxes: torch.Tensor, counts: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """boxes (G, K, 4), each group sorted by score (best first) with its ``counts[g]`` valid boxes first -> keep
    (G, K) bool. K <= MAX_TRITON_GROUP."""
    g, k = boxes.shape[:2]
    if k > MAX_TRITON_GROUP:
        raise ValueError(f"groups of {k} boxes: the kernel holds at most {MAX_TRITON_GROUP}")
    keep = torch.zeros((g, k), dtype=torch.int8, device=boxes.device)
    if g and k:
        block = max(16, triton.next_power_of_2(k))
        _nms_kernel[(g,)](boxes.float().contiguous(), counts.to(torch.int32).contiguous(), keep, k,
                          float(iou_threshold), BLOCK=block, num_warps=4 if block <= 1024 else 8,
                          enable_fp_fusion=False)  # fmt: skip
    return keep.bool()


if hasattr(torch.library, "custom_op"):  # torch >= 2.4: an opaque op that compile and export trace through
    nms_sorted_groups = torch.library.custom_op("fpn::nms_sorted_groups", mutates_args=())(_nms_sorted_groups)

    @nms_sorted_groups.register_fake
    def _(boxes: torch.Tensor, counts: torch.Tensor, iou_threshold: float) -> torch.Tensor:
        return boxes.new_empty(boxes.shape[:2], dtype=torch.bool)

else:  # older torch: a plain function (eager only)
    nms_sorted_groups = _nms_sorted_groups
