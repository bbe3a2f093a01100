"""fpn.structures: ground truth padded to a fixed capacity gives the model's losses of tight padding; staging
buffers for host-to-device copies."""

import pytest
import torch

from detector_helpers import rectangles_batch
from tiny_model import tiny_config

from fpn.model import build_detector
from fpn.structures import Staging, pad_targets, to_device


def _losses_and_grads(model, images, gt, seed=1):
    torch.manual_seed(seed)  # the samplers' random keys
    model.zero_grad(set_to_none=True)
    losses = model(images, None, gt)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_detector(tiny_config(), 4, load_pretrained=False).train()


def test_capacity_padding_gives_the_losses_of_tight_padding(tiny_model, one_thread):
    """One image: the same losses and gradients, bit for bit, with 2 slots or 16 (the padding slots are invalid:
    never matched, never sampled; the samplers' random keys of the real candidates are the same)."""
    images, targets = rectangles_batch()
    tight = _losses_and_grads(tiny_model, images[:1], pad_targets(targets[:1], "cpu"))
    fixed = _losses_and_grads(tiny_model, images[:1], pad_targets(targets[:1], "cpu", capacity=16))
    assert tight[0].keys() == fixed[0].keys() and all(torch.equal(tight[0][k], fixed[0][k]) for k in tight[0])
    assert all(torch.equal(tight[1][n], fixed[1][n]) for n in tight[1])
    assert all(v > 0 for v in tight[0].values())


def test_capacity_padding_with_several_images(tiny_model, one_thread):
    """Two images: the same losses and gradients with tight slots or 16. The samplers draw their keys
    candidate-major (``fpn.model.sampler``), so the appended padding columns leave each real candidate's key, and
    so the sample, as it was."""
    images, targets = rectangles_batch()
    tight = _losses_and_grads(tiny_model, images, pad_targets(targets, "cpu"))
    fixed = _losses_and_grads(tiny_model, images, pad_targets(targets, "cpu", capacity=16))
    for k in tight[0]:
        torch.testing.assert_close(tight[0][k], fixed[0][k], rtol=1e-6, atol=1e-7)
    for n in tight[1]:
        torch.testing.assert_close(tight[1][n], fixed[1][n], rtol=1e-5, atol=1e-7)
    assert all(v > 0 for v in tight[0].values())


def test_staging_on_a_cpu_is_a_plain_copy():
    staging = Staging()
    t = torch.arange(6.0)
    assert staging.to_device(t, "cpu") is t and to_device(t, "cpu", staging) is t and staging.allocations == 0
    with pytest.raises(ValueError):
        Staging(depth=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked staging serves a GPU")
def test_staging_reuses_a_ring_of_buffers_per_shape():
    """Copies of many tensors of two shapes: each arrives intact, from two buffers per shape (reused only after
    the copy that read them finished); the least recently used shape is forgotten past max_shapes."""
    staging = Staging(depth=2, max_shapes=2)
    outs = []
    for i in range(12):
        t = torch.full((3, 64, 64) if i % 2 else (5,), i, dtype=torch.uint8)
        outs.append((i, staging.to_device(t, "cuda")))
    for i, out in outs:
        assert out.device.type == "cuda" and bool((out == i).all())
    assert staging.allocations == 4
    staging.to_device(torch.zeros(7), "cuda")  # a third shape: the (5,) rings are dropped
    staging.to_device(torch.zeros(5, dtype=torch.uint8), "cuda")
    assert staging.allocations == 4 + 1 + 1
