"""A tiny trained detector checkpoint and its ONNX export, shared by the API, export and command tests
(session fixtures; the images and config they use are in tiny_model.py)."""

from __future__ import annotations

import pytest
import torch

from fpn.config import to_dict
from tiny_model import CLASSES, TRAIN_SIZES, rectangles_image, tiny_config


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint file of a tiny detector trained briefly (fixed seeds, fp32, one thread) to find the
    coloured rectangles of ``rectangles_image``: confident, well-placed detections, not perfect ones."""
    from fpn.data.transforms import batch_images
    from fpn.engine import checkpoint as ck
    from fpn.engine.schedule import build_optimizer, build_scheduler
    from fpn.model import build_detector

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        cfg = tiny_config()
        model = build_detector(cfg, len(CLASSES) + 1).train()
        samples = [rectangles_image(100 + i, h, w) for i, (h, w) in enumerate(TRAIN_SIZES)]
        images, sizes = batch_images([s[0] for s in samples], cfg.data.normalization)
        targets = [s[1] for s in samples]
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
        for _ in range(60):
            loss = sum(model(images, sizes, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    cfg.solver.amp_used = "none"
    solver_opt = build_optimizer(model, cfg.solver)
    checkpoint = ck.make_checkpoint(
        model, solver_opt, build_scheduler(solver_opt, cfg.solver, 1), None, epoch=1, step=0, iteration=60,
        config=to_dict(cfg), classes=CLASSES, net="res18", dataset="rectangles", session=1,
    )
    return ck.save_checkpoint(checkpoint, tmp_path_factory.mktemp("tiny") / "fpn_1_1_0.pth")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint):
    """``tiny_checkpoint`` exported by ``fpn export --format onnx`` (skipped without the onnx extra)."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name)
    from fpn.cli import main

    path = tiny_checkpoint.parent / "tiny.onnx"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(path)]) == 0
    return path
