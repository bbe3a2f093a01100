"""Shared pieces of the model and engine tests: a plain module, importable from every test folder (pytest
puts tests/, the folder of tests/conftest.py, on the import path)."""

import contextlib
import os

import torch

import fpn.model.nms


def triton_runs_on(device: torch.device) -> bool:
    """Triton kernels run on CUDA tensors, or on CPU tensors in Triton's interpreter (tests/conftest.py)."""
    if not fpn.model.nms.triton_available():
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


@contextlib.contextmanager
def branches(model, cuda: bool):
    """The implementations a CUDA run picks (``cuda=True``: packed RoIAlign, NMS as keep masks from the Triton
    kernel, in Triton's interpreter on a CPU) or a CPU run's (the sparse pooler, NMS in threads per segment, the
    candidates' NMS), forced on whatever device the model is; restored afterwards."""
    pooler, rpn, post = model.roi_heads.pooler, model.rpn, model.roi_heads.postprocessor
    saved = pooler.impl, rpn.nms_impl, post.nms_impl, fpn.model.nms.use_triton_kernel
    pooler.impl, rpn.nms_impl, post.nms_impl = ("packed", "mask", "mask") if cuda else ("sparse", "segment", "candidates")
    if cuda:
        device = next(model.parameters()).device
        if not triton_runs_on(device):
            raise RuntimeError("the CUDA branches need Triton (TRITON_INTERPRET=1 on a CPU)")
        fpn.model.nms.use_triton_kernel = lambda device, group_size: True
    try:
        yield model
    finally:
        pooler.impl, rpn.nms_impl, post.nms_impl, fpn.model.nms.use_triton_kernel = saved


def rectangles_batch():
    """Two 128x128 noise images with coloured rectangles (class 1 red, 2 green, 3 blue)."""
    g = torch.Generator().manual_seed(0)
    colours = torch.tensor([[1.0, -1, -1], [-1, 1.0, -1], [-1, -1, 1.0]])
    images = torch.randn(2, 3, 128, 128, generator=g) * 0.3
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [70.0, 20.0, 120.0, 50.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[30.0, 40.0, 90.0, 100.0], [5.0, 90.0, 30.0, 120.0], [96.0, 8.0, 124.0, 40.0]]),
         "labels": torch.tensor([3, 1, 2])},
    ]
    for i, t in enumerate(targets):
        for (x1, y1, x2, y2), label in zip(t["boxes"].long().tolist(), t["labels"].tolist()):
            images[i, :, y1:y2, x1:x2] = colours[label - 1].view(3, 1, 1)
    return images, targets
