"""Shared pieces of the model and engine tests: a plain module, importable from every test folder (pytest
puts tests/, the folder of tests/conftest.py, on the import path)."""

import os

import torch

from fpn.model.ops import Ops, choose_ops
from fpn.model.ops.nms import triton_installed


def triton_runs_on(device: torch.device) -> bool:
    """Triton kernels run on CUDA tensors, or on CPU tensors in Triton's interpreter (tests/conftest.py)."""
    if not triton_installed():
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def branch_ops(cuda: bool, device: torch.device | str = "cpu", **choices) -> Ops:
    """The implementations a CUDA run picks (``cuda=True``: packed RoIAlign, NMS as keep masks from the Triton
    kernel, in Triton's interpreter on a CPU) or a CPU run's (the sparse pooler, NMS in threads per group, the
    candidates' batched NMS), for a model on ``device``, whatever that is."""
    if cuda and not triton_runs_on(torch.device(device)):
        raise RuntimeError("the CUDA branches need Triton (TRITON_INTERPRET=1 on a CPU)")
    return choose_ops("cuda" if cuda else "cpu", "train", triton=cuda, **choices)


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


def assert_pooled_and_grads_close(ours, ref, feats, g, tol=1e-4):
    """A pooler's output ``ours`` equals the reference ``ref`` within ``tol``, and so do the gradients of both with
    respect to ``feats`` under the same random weighting (drawn from ``g``; summation order differs)."""
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    weights = torch.randn(ref.shape, generator=g).to(ref.device)
    grads = torch.autograd.grad((ours * weights).sum(), feats)
    grads_ref = torch.autograd.grad((ref * weights).sum(), feats)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
