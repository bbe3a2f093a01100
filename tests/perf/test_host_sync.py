"""Host syncs: what the counter counts, and the ceiling a training step and an inference batch stay under with
the branches a CUDA run takes (forced here on a CPU: the Triton kernels in Triton's interpreter)."""

import pytest
import torch

from detector_helpers import branch_ops, rectangles_batch, triton_runs_on
from tiny_model import small_config
from fpn.structures import pad_targets, to_device
from fpn.engine.device import make_scaler
from fpn.perf.host_sync import count_host_syncs
from fpn.engine.schedule import build_optimizer
from fpn.engine.step import TrainStep
from fpn.model import build_detector

pytestmark = pytest.mark.usefixtures("one_thread")
CEILING = 2  # per training step and per inference batch (issue 20; the loss is read once per log interval)


def test_counter_counts_what_waits_for_a_gpu_and_nothing_else():
    x = torch.arange(6.0)
    with count_host_syncs() as syncs:
        y = (x * 2 + 1).sort().values.topk(2).values  # queued work only
        x.sum().item()
        bool(x.any())
        x[x > 2]  # boolean mask: data-dependent size
        x.nonzero()
        torch.bincount(x.long())
        x.tolist()
        torch.tensor([1.0, 2.0], device="cpu")  # on CUDA: a copy from pageable memory that waits
        to_device(torch.tensor([1.0]), "cpu")  # the non-blocking way
        torch.repeat_interleave(x.long(), 2)  # size known without reading the data
        host = x.cpu()  # one read; then the data is on the host
        host[host > 2].tolist()
        torch.bincount(host.long()).numpy()
    sites = syncs.describe()
    assert syncs.total == 8 and "(.cpu())" in sites, sites
    assert "tests/perf/test_host_sync.py:" in sites and "(boolean mask index)" in sites
    assert y.shape == (2,)


def _model_and_batch(device, ops):
    torch.manual_seed(0)
    model = build_detector(small_config(), 4, load_pretrained=False, ops=ops).to(device)
    images, targets = rectangles_batch()  # batch 2, as the counts
    return model, images.to(device), pad_targets(targets, "cpu")  # the loader's padded targets (Batch.gt)


@pytest.mark.slow
def test_training_step_and_inference_batch_stay_under_the_ceiling(device):
    if not triton_runs_on(device):
        pytest.skip("the CUDA branches need Triton (on a CPU: its interpreter, TRITON_INTERPRET=1)")
    model, images, gt = _model_and_batch(device, branch_ops(cuda=True, device=device))
    step = TrainStep(model, build_optimizer(model, small_config().solver), make_scaler(device, "none"), device, "none")
    step(images, None, gt)  # warm-up: anchors cached
    with count_host_syncs() as train:
        step(images, None, gt)
    model.eval()
    with torch.no_grad(), count_host_syncs() as infer:
        detections = model(images, None)
    with count_host_syncs() as to_host:  # what fpn test, the Python API and the bench's latency run use
        on_host = model.detect_to_host(images, None)
    assert train.total == 0, train.describe()  # NMS as a keep mask, one packed RoIAlign: nothing to read
    # what remains is reading the results: how many detections there are, which image each is of (small reads)
    assert infer.total <= CEILING and all(".tolist()" in site or "(nonzero)" in site for site in infer.by_site), (
        infer.describe())
    assert to_host.total <= CEILING and any(".cpu()" in site for site in to_host.by_site), to_host.describe()
    assert sum(len(d["labels"]) for d in detections) > 0
    for a, b in zip(detections, on_host):
        assert all(torch.equal(a[k].cpu(), b[k]) for k in ("boxes", "scores", "labels"))


def test_without_triton_the_training_step_waits_once(device):
    """On a GPU without Triton the RPN's NMS runs as offset torchvision calls: one wait per call."""
    model, images, gt = _model_and_batch(device, branch_ops(cuda=False, device=device, pool="packed", nms="offset"))
    step = TrainStep(model, build_optimizer(model, small_config().solver), make_scaler(device, "none"), device, "none")
    step(images, None, gt)
    with count_host_syncs() as syncs:
        step(images, None, gt)
    assert syncs.total == 1 and "torchvision/ops/boxes.py" in syncs.describe(), syncs.describe()


def test_the_call_site_skips_library_frames_also_in_a_virtualenv_inside_the_checkout():
    import traceback
    from pathlib import Path

    import fpn
    from fpn.perf.host_sync import project_site

    root = Path(fpn.__file__).parent.parent
    venv = f"{root}/.venv/lib/python3.11/site-packages"
    stack = [traceback.FrameSummary(f"{root}/fpn/model/rpn.py", 10, "forward"),
             traceback.FrameSummary(f"{venv}/torchvision/ops/boxes.py", 40, "nms"),
             traceback.FrameSummary(f"{venv}/torch/_dynamo/eval_frame.py", 1548, "_fn")]  # fmt: skip
    assert project_site(stack) == "torchvision/ops/boxes.py:40"
    assert project_site(stack[:1] + stack[2:]) == "fpn/model/rpn.py:10"
    assert project_site([traceback.FrameSummary(f"{root}/tests/x.py", 3, "t")] + stack[2:]) == "tests/x.py:3"
