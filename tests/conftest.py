"""A tiny trained detector checkpoint shared by the API, export and command tests (session fixtures)."""

from __future__ import annotations

import pytest
import torch

from fpn.config import synthetic, to_dict

CLASSES = ("red", "green", "blue")
COLOURS = torch.tensor([[230, 30, 30], [30, 200, 40], [40, 50, 220]], dtype=torch.uint8)
TRAIN_SIZES = [(128, 160), (160, 128), (128, 128), (128, 192)]


def rectangles_image(seed: int, height: int, width: int, count: int = 3) -> tuple[torch.Tensor, dict]:
    """uint8 RGB (3, height, width): grey noise with ``count`` filled rectangles of the class colours;
    and its target {"boxes" continuous xyxy, "labels" 1..3}. A pure function of its arguments."""
    g = torch.Generator().manual_seed(seed)
    image = (torch.rand(3, height, width, generator=g) * 80 + 88).to(torch.uint8)
    boxes, labels = [], []
    for _ in range(count):
        w = int(width * (0.2 + 0.3 * torch.rand(1, generator=g)))
        h = int(height * (0.2 + 0.3 * torch.rand(1, generator=g)))
        x = int((width - w) * torch.rand(1, generator=g))
        y = int((height - h) * torch.rand(1, generator=g))
        label = int(torch.randint(1, 4, (1,), generator=g))
        image[:, y:y + h, x:x + w] = COLOURS[label - 1].view(3, 1, 1)
        boxes.append([x, y, x + w, y + h])
        labels.append(label)
    return image, {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


def tiny_config():
    """The synthetic preset shrunk further: test scale 128 / max 192, narrow FPN, few proposals."""
    cfg = synthetic()
    d, m = cfg.data, cfg.model
    d.train_scales, d.test_scale, d.max_size = (128,), 128, 192
    m.fpn_channels = m.rpn_channels = 32
    m.fc_dim = 64
    m.rpn_batch_per_image = m.roi_batch_per_image = 64
    m.rpn_pre_nms_top_n_train = m.rpn_pre_nms_top_n_test = 200
    m.rpn_post_nms_top_n_train = m.rpn_post_nms_top_n_test = 100
    m.roi_canonical_size = 64.0
    return cfg


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


def parity_images() -> list[torch.Tensor]:
    """Inputs of several sizes and aspect ratios (each resized differently by the test scale 128 / max 192:
    kept, shrunk, enlarged, capped by the long side), and a flat grey image with no objects."""
    sizes = [(128, 160), (96, 300), (300, 200), (50, 70), (413, 419), (360, 150)]
    images = [rectangles_image(7 + i, h, w)[0] for i, (h, w) in enumerate(sizes)]
    return images + [torch.full((3, 120, 150), 128, dtype=torch.uint8)]
