import pytest
import torch
from torchvision.ops import batched_nms

from fpn.model.box_ops import grouped_nms, offset_nms, rank_within_groups, segment_nms


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


def test_grouped_nms_batched_path_equals_segment_path(device):
    # the CUDA path (batched_nms over group ids built from the sizes) and the CPU one, on either device
    g = torch.Generator().manual_seed(3)
    sizes = [50, 0, 30, 12]
    boxes, scores = _boxes(g, sum(sizes)).to(device), torch.rand(sum(sizes), generator=g).to(device)
    batched = grouped_nms(boxes, scores, sizes, 0.5, use_batched=True)
    assert torch.equal(batched, grouped_nms(boxes, scores, sizes, 0.5))  # the device's default
    assert torch.equal(batched, segment_nms(boxes, scores, sizes, 0.5))


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


def test_rank_within_groups_keeps_priority_order():
    groups = torch.tensor([2, 0, 2, 1, 0, 2])
    order, rank = rank_within_groups(groups, 4)
    assert order.tolist() == [1, 4, 3, 0, 2, 5] and rank.tolist() == [0, 1, 0, 0, 1, 2]
