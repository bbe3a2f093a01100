"""NMS within groups: every implementation keeps what the reference (torchvision's ``nms`` per image and group)
keeps; ``best_kept`` selects each image's best kept boxes."""

import copy
import pickle

import pytest
import torch

from detector_helpers import triton_runs_on
from fpn.model.ops.nms import (MAX_TRITON_GROUP, BatchedNMS, OffsetNMS, ReferenceNMS, ThreadedNMS, TritonNMS,
                               best_kept, offset_nms)  # fmt: skip

SIZES = [40, 0, 25, 7, 1]  # groups along K: an empty one, a lone box


def _boxes(g, m):
    xy = torch.rand(m, 2, generator=g) * 50
    return torch.cat([xy, xy + 2 + torch.rand(m, 2, generator=g) * 30], 1)


def _case(seed: int, n: int, sizes: list[int]):
    """N images of K = sum(sizes) random boxes (many overlapping), a fifth invalid (NaN boxes among them)."""
    g = torch.Generator().manual_seed(seed)
    k = sum(sizes)
    boxes = _boxes(g, n * k).view(n, k, 4)  # (N*K, 4) -> (N, K, 4)
    valid = torch.rand(n, k, generator=g) > 0.2
    boxes[~valid & (torch.rand(n, k, generator=g) > 0.5)] = float("nan")  # an invalid box may be anything
    return boxes, torch.rand(n, k, generator=g), valid


def _implementations(device):
    impls = [ThreadedNMS(), OffsetNMS(), OffsetNMS(max_boxes=60), OffsetNMS(max_boxes=1), OffsetNMS(max_boxes=None),
             OffsetNMS(gather_valid=True, max_boxes=None), BatchedNMS()]
    if triton_runs_on(device):
        impls.append(TritonNMS(OffsetNMS()))
    return impls


def test_reference_hand_made_case():
    boxes = torch.tensor([[[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]]],
                         dtype=torch.float32)  # fmt: skip
    scores = torch.tensor([[0.5, 0.9, 0.8, 0.1, 0.95]])
    valid = torch.tensor([[True, True, True, True, False]])
    # group 1: boxes 0, 1 (overlapping: keep 1); group 2: boxes 2, 3 (apart: keep both), 4 invalid (suppresses none)
    keep = ReferenceNMS()(boxes, scores, valid, [2, 3], 0.5, torch.tensor(30.0))
    assert keep.tolist() == [[False, True, True, True, False]]


@pytest.mark.parametrize("n, sizes", [(3, SIZES), (2, [100]), (2, [0, 0]), (1, [3, 300])])
def test_every_implementation_equals_the_reference(device, n, sizes):
    boxes, scores, valid = (t.to(device) for t in _case(len(sizes) + n, n, sizes))
    valid[0, : sizes[0]] = False  # a group with nothing valid
    biggest = torch.tensor(80.0, device=device)
    for thresh in (0.5, 0.7):
        reference = ReferenceNMS()(boxes, scores, valid, sizes, thresh, biggest)
        assert not reference[~valid].any() and (reference.sum() > 0 or sum(sizes) == 0)
        for impl in _implementations(device):
            assert torch.equal(impl(boxes, scores, valid, sizes, thresh, biggest), reference), impl


def test_triton_kernel_on_groups_of_any_size(device):
    """Group sizes that are and are not a power of two, a lone box, no images; larger groups than the kernel
    holds go to its fallback."""
    if not triton_runs_on(device):
        pytest.skip("Triton kernels run on CUDA, or on a CPU in Triton's interpreter (TRITON_INTERPRET=1)")
    for n, sizes in [(2, [200, 37, 1]), (0, [8]), (1, [MAX_TRITON_GROUP + 1])]:
        boxes, scores, valid = (t.to(device) for t in _case(1, n, sizes))
        biggest = torch.tensor(80.0, device=device)
        keep = TritonNMS(OffsetNMS())(boxes, scores, valid, sizes, 0.5, biggest)
        assert torch.equal(keep, ReferenceNMS()(boxes, scores, valid, sizes, 0.5, biggest))


def test_threads_do_not_change_the_result_and_the_pool_is_not_copied():
    boxes, scores, valid = _case(7, 2, [300, 120, 0, 45, 9])
    impl, threads = ThreadedNMS(), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = impl(boxes, scores, valid, [300, 120, 0, 45, 9], 0.7, torch.tensor(80.0))
        torch.set_num_threads(2)
        assert torch.equal(impl(boxes, scores, valid, [300, 120, 0, 45, 9], 0.7, torch.tensor(80.0)), serial)
    finally:
        torch.set_num_threads(threads)
    assert impl._pool is not None
    for twin in (copy.deepcopy(impl), pickle.loads(pickle.dumps(impl))):
        assert twin._pool is None


def test_offset_nms_groups_never_suppress_each_other():
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2)
    assert offset_nms(same, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5, torch.tensor(10.0)).tolist() == [0, 1]
    empty = offset_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5, torch.tensor(1.0))
    assert empty.shape == (0,)


def test_best_kept_ranks_by_score_ties_by_position_and_pads():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.7], [0.1, 0.2, 0.3, 0.4]])
    keep = torch.tensor([[True, True, True, False], [False, False, False, False]])
    index, valid = best_kept(scores, keep, 5)
    assert valid.tolist() == [[True, True, True, False, False], [False] * 5]
    assert index[0, :3].tolist() == [1, 0, 2] and index.max() <= 3
