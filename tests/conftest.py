"""Fixtures shared by every test folder.

``device``: a test that takes it runs once per available device: the CPU always, CUDA when present (so
the same tests cover the GPU on a machine that has one). Such tests carry the ``device`` marker:
``pytest -m device`` runs only them. ``FPN_TEST_DEVICES=cuda`` (a comma-separated list) restricts them
to those devices; ``scripts/gpu_check.sh`` uses it, and asking for CUDA where there is none is an error.

``one_thread``: torch single-threaded for the rest of the test module.

``tiny_checkpoint`` / ``tiny_onnx``: a tiny trained detector checkpoint and its ONNX export, shared by the
API, export and command tests (session fixtures; the images and config they use are in tiny_model.py).

Without CUDA, Triton kernels (``fpn.model.ops.triton_nms``) run in Triton's interpreter on CPU tensors
(``TRITON_INTERPRET=1``, set here before anything imports them), so tests cover them on a CPU too.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fpn.config import to_dict
from tiny_model import CLASSES, TRAIN_SIZES, rectangles_image, tiny_config


def _devices() -> list[str]:
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    wanted = [d.strip() for d in os.environ.get("FPN_TEST_DEVICES", "").split(",") if d.strip()]
    missing = [d for d in wanted if d not in available]
    if missing:
        raise pytest.UsageError(f"FPN_TEST_DEVICES={','.join(wanted)}: not available here: {', '.join(missing)}")
    return wanted or available


@pytest.fixture(scope="module")
def one_thread():
    """torch runs single-threaded for the rest of the module (small tensors, or full-size models on two shared
    cores: no OpenMP oversubscription stalls; module-scoped so module-scoped fixtures can use it too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    config.addinivalue_line("markers", "device: runs once per available device (the `device` fixture)")


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", [torch.device(d) for d in _devices()], ids=str)


def pytest_collection_modifyitems(items):
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint file of a tiny detector trained briefly (fixed seeds, fp32, one thread) to find the
    coloured rectangles of ``rectangles_image``: confident, well-placed detections, not perfect ones."""
    from fpn.data.transforms import batch_images
    from fpn import checkpoint as ck
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
