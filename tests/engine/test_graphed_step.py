"""runtime.cuda_graphs: the training step captured as CUDA graphs (``fpn.engine.graphed_step``), the learning rate
as a device tensor the schedule overwrites in place, and the eager fallback (said once) for what cannot be
captured."""

import pytest
import torch

from detector_helpers import rectangles_batch
from tiny_model import small_config
from fpn.config import synthetic
from fpn.config.serialize import apply_overrides
from fpn.engine.graphed_step import GraphedTrainStep, capture_blocker
from fpn.engine.schedule import apply_solver, build_optimizer, build_scheduler, capture_problem, step_scheduler
from fpn.engine.step import TrainStep
from fpn.errors import UserError
from fpn.model import build_detector
from fpn.structures import pad_targets

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_option_is_off_by_default_and_validated():
    assert synthetic().runtime.cuda_graphs is False
    assert apply_overrides(synthetic(), ["runtime.cuda_graphs=true"]).validate().runtime.cuda_graphs is True
    with pytest.raises(UserError, match="runtime.cuda_graphs"):
        apply_overrides(synthetic(), ["runtime.cuda_graphs=maybe"])
    cfg = synthetic()
    cfg.runtime.cuda_graphs = "yes"
    with pytest.raises(UserError, match="runtime.cuda_graphs: must be true or false"):
        cfg.validate()


def _setup(device, seed=0, capturable=False, amp="none", optimizer="sgd"):
    torch.manual_seed(seed)
    cfg = small_config()
    cfg.solver.optimizer, cfg.solver.lr, cfg.solver.warmup_iters = optimizer, 0.01, 4  # the rate changes every step
    model = build_detector(cfg, 4, load_pretrained=False, device=device).to(device).train()
    optimizer = build_optimizer(model, cfg.solver, grad_scaler=amp == "fp16", capturable=capturable)
    scheduler = build_scheduler(optimizer, cfg.solver, iters_per_epoch=10)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=amp == "fp16")
    return model, TrainStep(model, optimizer, scaler, torch.device(device), amp), scheduler


def _batch(device):
    images, targets = rectangles_batch()
    return images.to(device), [(128, 128), (100, 120)], pad_targets(targets, "cpu").to(device)


def _train(step, scheduler, batch, iterations):
    losses, rates = [], []
    for _ in range(iterations):
        _, values = step(*batch)
        losses.append(values)
        rates.append(float(step.lr))
        step_scheduler(scheduler)
    return torch.stack(losses).cpu(), rates


def test_learning_rate_tensor_is_overwritten_in_place_by_the_schedule():
    """What a captured step relies on: the schedule (and a resume's ``apply_solver``) write the rate into the same
    tensor, with the values the float schedule gives."""
    cfg = small_config()
    cfg.solver.lr, cfg.solver.warmup_iters = 0.01, 4
    model = torch.nn.Linear(2, 2)
    floats = build_optimizer(model, cfg.solver)
    groups = [{**g, "lr": torch.tensor(g["lr"])} for g in floats.param_groups]
    tensors = torch.optim.SGD(groups, lr=torch.tensor(cfg.solver.lr), momentum=cfg.solver.momentum)
    held = [g["lr"] for g in tensors.param_groups]
    a, b = build_scheduler(floats, cfg.solver, 10), build_scheduler(tensors, cfg.solver, 10)
    for _ in range(5):
        step_scheduler(a)
        step_scheduler(b)
        assert [g["lr"] is t for g, t in zip(tensors.param_groups, held)] == [True, True]
        assert [float(g["lr"]) for g in tensors.param_groups] == pytest.approx([g["lr"] for g in floats.param_groups])
    apply_solver(tensors, b, cfg.solver)
    assert all(g["lr"] is t for g, t in zip(tensors.param_groups, held))
    assert "learning rate is a Python number" in capture_problem(floats)
    with pytest.raises(ValueError, match="one CUDA device"):
        build_optimizer(model, cfg.solver, capturable=True)  # CPU parameters


@pytest.mark.slow
def test_cpu_falls_back_once_and_trains_identically(device):
    """On a CPU the option says why it trains eagerly, once, and changes nothing; on CUDA it captures and keeps
    the eager step's numbers (closely: atomics in the backward differ from run to run)."""
    cuda = device.type == "cuda"
    model, step, scheduler = _setup(device)
    other_model, other_step, graphed_scheduler = _setup(device, capturable=cuda)
    said = []
    graphed = GraphedTrainStep(other_step, warmup=1, say=said.append)
    batch = _batch(device)
    torch.manual_seed(1)
    eager_losses, eager_rates = _train(step, scheduler, batch, 4)
    torch.manual_seed(1)
    losses, rates = _train(graphed, graphed_scheduler, batch, 4)
    if not cuda:
        assert said == ["runtime.cuda_graphs: the device is cpu, not CUDA; training runs eagerly"]
        assert torch.equal(losses, eager_losses) and rates == eager_rates
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), other_model.parameters()))
    else:
        assert said == [] and len(graphed.graphs) == 1
        torch.testing.assert_close(losses, eager_losses, rtol=1e-3, atol=1e-5)
        assert rates == pytest.approx(eager_rates)
        for p, q in zip(model.parameters(), other_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)


def test_what_cannot_be_captured_is_named():
    step = _setup("cpu")[1]
    assert capture_blocker(step) == "the device is cpu, not CUDA"
    said = []
    graphed = GraphedTrainStep(step, say=said.append)
    graphed(*_batch("cpu"))
    graphed(*_batch("cpu"))
    assert len(said) == 1  # said once
    assert graphed.graphs == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the capture runs in the GPU check")
@pytest.mark.parametrize("optimizer,amp", [("sgd", "none"), ("sgd", "bf16"), ("sgd", "fp16"), ("adamw", "none")])
def test_captured_step_equals_the_eager_step_on_cuda(optimizer, amp):
    """Forward + backward + optimiser step replayed from one graph: the eager step's losses, rates and weights over
    the steps after the capture (TF32 off: both must round alike). fp16 (GradScaler) trains eagerly, said once."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    model, step, scheduler = _setup("cuda", capturable=amp != "fp16", amp=amp, optimizer=optimizer)
    other, graphed_step, graphed_scheduler = _setup("cuda", capturable=amp != "fp16", amp=amp, optimizer=optimizer)
    said = []
    graphed = GraphedTrainStep(graphed_step, warmup=2, say=said.append)
    batch = _batch("cuda")
    torch.manual_seed(1)
    eager_losses, eager_rates = _train(step, scheduler, batch, 6)
    torch.manual_seed(1)
    losses, rates = _train(graphed, graphed_scheduler, batch, 6)
    if amp == "fp16":
        assert said == [("runtime.cuda_graphs: fp16's GradScaler decides on the host whether to skip a step; "
                         "training runs eagerly")]
        return
    assert said == [] and len(graphed.graphs) == 1  # steps 3..6 replayed one graph
    tol = {"rtol": 1e-3, "atol": 1e-4} if amp == "none" else {"rtol": 2e-2, "atol": 1e-3}
    torch.testing.assert_close(losses, eager_losses, **tol)
    assert rates == pytest.approx(eager_rates) and len(set(rates)) == 6  # the replays read each new rate
    for p, q in zip(model.parameters(), other.parameters()):
        torch.testing.assert_close(p, q, **tol)
