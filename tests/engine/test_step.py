"""TrainStep: the training iteration ``fpn train`` runs and ``fpn bench --mode train`` times."""

import pytest
import torch

from detector_helpers import rectangles_batch
from tiny_model import small_config
from fpn.engine.schedule import build_optimizer
from fpn.engine.step import TrainStep
from fpn.model import build_detector


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_fp16_with_a_grad_scaler_and_sgd_trains_a_detector(device):
    """The fp16 path (autocast to float16, GradScaler, the VOC presets' SGD) on any device, a CPU included:
    the first steps overflow and are skipped, then the losses fall, all finite."""
    torch.manual_seed(0)
    cfg = small_config()
    cfg.solver.optimizer, cfg.solver.lr = "sgd", 0.02
    model = build_detector(cfg, 4, load_pretrained=False).to(device)
    images, targets = rectangles_batch()
    images, targets = images.to(device), [{k: v.to(device) for k, v in t.items()} for t in targets]
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**20)  # the first steps overflow for sure
    optimizer = build_optimizer(model, cfg.solver, grad_scaler=True)
    step = TrainStep(model, optimizer, scaler, device, "fp16")
    updates = []
    step.on_update = lambda: updates.append(scaler.get_scale())  # called as each update starts
    totals = []
    for _ in range(14):
        names, values = step(images, [(128, 128)] * 2, targets)
        totals.append(values.sum())
    totals = torch.stack(totals).cpu()
    assert names == ("rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box")
    assert scaler.get_scale() < 2.0**20  # steps were skipped: the path under test ran
    assert torch.isfinite(totals).all() and all(torch.isfinite(p).all() for p in model.parameters())
    assert totals[-4:].mean() < 0.6 * totals[:3].mean()
    assert len(updates) == 14 and updates[0] == 2.0**20


def test_step_needs_a_resolved_precision():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="resolved precision"):
        TrainStep(model, opt, torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"), "auto")
