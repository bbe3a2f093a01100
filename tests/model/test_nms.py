"""NMS within groups: every path keeps what torchvision's ``nms`` keeps in each group."""

import pytest
import torch
from torchvision.ops import batched_nms, nms

from detector_helpers import triton_runs_on
from fpn.model.nms import chunked_offset_nms, grouped_nms, nms_keep_mask, offset_nms, segment_nms


def _boxes(g, m):
    xy = torch.rand(m, 2, generator=g) * 50
    return torch.cat([xy, xy + 2 + torch.rand(m, 2, generator=g) * 30], 1)


@pytest.mark.parametrize("sizes", [[40, 0, 25, 7, 1], [100], [0, 0]])
def test_segment_nms_equals_batched_nms_with_a_group_per_segment(sizes):
    g = torch.Generator().manual_seed(len(sizes))
    m = sum(sizes)
    boxes = _boxes(g, m)
    scores = torch.rand(m, generator=g)
    if m:
        scores[::9] = float("-inf")  # rejected boxes, as the RPN marks them
        boxes[::9] = 0.0
    group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    ours = segment_nms(boxes, scores, sizes, 0.5)
    ref = batched_nms(boxes, scores, group, 0.5)
    assert sorted(ours.tolist()) == sorted(ref.tolist())
    assert torch.equal(scores[ours], scores[ref])  # best first in both
    finite = scores[ours][scores[ours].isfinite()]
    assert (finite.diff() <= 0).all()


def test_segment_nms_hand_made_case():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.8, 0.1])
    # segment 1: boxes 0, 1 (overlapping: keep 1); segment 2: boxes 2, 3 (apart: keep both)
    assert segment_nms(boxes, scores, [2, 2], 0.5).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="add up to 3"):
        segment_nms(boxes, scores, [2, 1], 0.5)


def test_segment_nms_threads_do_not_change_the_result():
    g = torch.Generator().manual_seed(7)
    sizes = [300, 120, 0, 45, 300, 9]
    boxes, scores = _boxes(g, sum(sizes)), torch.rand(sum(sizes), generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = segment_nms(boxes, scores, sizes, 0.7)
        torch.set_num_threads(2)
        assert torch.equal(segment_nms(boxes, scores, sizes, 0.7), serial)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("max_boxes", [25_000, 60, 1])  # one call; a few; one per segment
def test_grouped_nms_offset_path_equals_segment_path(device, max_boxes):
    """The CUDA path (whole segments offset into calls of at most ``max_boxes``) keeps what the CPU one keeps, in
    the same order, on either device."""
    g = torch.Generator().manual_seed(3)
    sizes = [50, 0, 30, 12, 41]
    boxes, scores = _boxes(g, sum(sizes)).to(device), torch.rand(sum(sizes), generator=g).to(device)
    scores[::11] = float("-inf")  # rejected boxes, as the RPN marks them
    offset = chunked_offset_nms(boxes, scores, sizes, 0.5, torch.tensor(80.0, device=device), max_boxes)
    assert torch.equal(offset, segment_nms(boxes, scores, sizes, 0.5))
    assert torch.equal(offset, grouped_nms(boxes, scores, sizes, 0.5, True, torch.tensor(80.0, device=device)))
    assert chunked_offset_nms(boxes[:0], scores[:0], [0, 0], 0.5, torch.tensor(1.0), max_boxes).shape == (0,)


def test_offset_nms_equals_batched_nms():
    """The exportable per-group NMS keeps what torchvision's batched_nms keeps, in the same order, also for
    no boxes at all; boxes of different groups never suppress each other."""
    g = torch.Generator().manual_seed(3)
    boxes = _boxes(g, 300)  # coordinates within 0..80
    scores = torch.rand(300, generator=g)
    groups = torch.randint(0, 7, (300,), generator=g)
    keep = offset_nms(boxes, scores, groups, 0.5, torch.tensor(80.0))
    assert torch.equal(keep, batched_nms(boxes, scores, groups, 0.5))
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2)
    assert offset_nms(same, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5, torch.tensor(10.0)).tolist() == [0, 1]
    empty = offset_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5, torch.tensor(1.0))
    assert empty.shape == (0,)


def _groups(seed: int, g: int, k: int):
    """G groups of K random boxes (many overlapping), scores with ties broken by nothing, a fifth invalid."""
    gen = torch.Generator().manual_seed(seed)
    boxes = _boxes(gen, g * k).view(g, k, 4)
    return boxes, torch.rand(g, k, generator=gen), torch.rand(g, k, generator=gen) > 0.2


def _reference_mask(boxes, scores, valid, thresh):
    """torchvision's nms on each group's valid boxes, as a (G, K) keep mask."""
    keep = torch.zeros_like(valid)
    for i in range(valid.shape[0]):
        index = valid[i].nonzero().squeeze(1)
        keep[i, index[nms(boxes[i, index], scores[i, index], thresh)]] = True
    return keep


def test_keep_mask_without_triton_equals_nms_per_group():
    boxes, scores, valid = _groups(0, 6, 120)
    valid[2] = False  # a group with nothing valid
    keep = nms_keep_mask(boxes, scores, valid, 0.5, torch.tensor(80.0), use_triton=False)
    assert torch.equal(keep, _reference_mask(boxes, scores, valid, 0.5)) and keep.sum() > 100
    assert not keep[~valid].any()


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(5, 200), (3, 37), (1, 1), (0, 8)])
def test_triton_kernel_equals_nms_per_group(device, shape):
    """The Triton kernel (on CUDA, or in Triton's interpreter on a CPU) keeps exactly what torchvision keeps,
    for group sizes that are and are not a power of two, a lone box and no groups."""
    if not triton_runs_on(device):
        pytest.skip("Triton kernels run on CUDA, or on a CPU in Triton's interpreter (TRITON_INTERPRET=1)")
    boxes, scores, valid = (t.to(device) for t in _groups(1, *shape))
    for thresh in (0.5, 0.7):
        keep = nms_keep_mask(boxes, scores, valid, thresh, torch.tensor(80.0, device=device), use_triton=True)
        assert torch.equal(keep.cpu(), _reference_mask(boxes.cpu(), scores.cpu(), valid.cpu(), thresh))


def test_a_kernel_that_cannot_run_falls_back_with_one_warning(monkeypatch):
    """A Triton toolchain problem on the user's machine costs speed, not the run."""
    pytest.importorskip("triton")
    import fpn.model.nms as nms_module
    import fpn.model.triton_nms

    def broken(*args):
        raise RuntimeError("PTX assembly failed\nmore lines")

    monkeypatch.setattr(fpn.model.triton_nms, "nms_sorted_groups", broken)
    monkeypatch.setattr(nms_module, "_TRITON_FAILED", [])
    boxes, scores, valid = _groups(2, 3, 50)
    with pytest.warns(RuntimeWarning, match="Triton NMS kernel failed .RuntimeError: PTX assembly failed.; using"):
        keep = nms_keep_mask(boxes, scores, valid, 0.5, torch.tensor(80.0), use_triton=True)
    assert torch.equal(keep, _reference_mask(boxes, scores, valid, 0.5))
    assert not nms_module.use_triton_kernel(torch.device("cuda"), 50)  # not tried again
