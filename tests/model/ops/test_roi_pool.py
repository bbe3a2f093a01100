"""Multi-level RoIAlign: every implementation gives what torchvision's ``roi_align`` per level gives."""

import pytest
import torch
from torchvision.ops import roi_align

from detector_helpers import assert_pooled_and_grads_close

from fpn.model.level_mapper import LevelMapper
from fpn.model.ops import choose_ops
from fpn.model.ops.roi_pool import by_mask_roi_align, packed_roi_align, per_level_roi_align, sparse_roi_align
from fpn.model.roi_heads import MultiScaleRoIAlign

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def _features(g, n=3, c=5, h=40, w=56):
    return [torch.randn(n, c, h // 2**i, w // 2**i, generator=g) for i in range(4)]


def _rois(g, r, n=3, size=(224.0, 160.0)):
    """Boxes of every size, some reaching past the image (and the feature maps) on any side."""
    xy = torch.rand(r, 2, generator=g) * torch.tensor(size) * 1.2 - 20
    wh = torch.exp(torch.rand(r, 2, generator=g) * 5) + 0.5  # 1.5 .. 150 px
    image = torch.randint(0, n, (r, 1), generator=g).float()
    return torch.cat([image, xy, xy + wh], 1)


def _torchvision_per_level(feats, rois, level, s, ratio, aligned=True):
    out = feats[0].new_zeros(rois.shape[0], feats[0].shape[1], s, s)
    for lvl in range(len(feats)):
        sel = level == lvl
        if sel.any():
            out[sel] = roi_align(feats[lvl], rois[sel], s, SCALES[lvl], ratio, aligned=aligned)
    return out


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [1, 2, 3])
def test_sparse_roi_align_equals_torchvision_values_and_gradients(ratio, aligned, device):
    """Both alignments: aligned=False (torchvision's detection models) has no half-pixel shift and makes a RoI
    at least 1 feature pixel wide (the boxes here go down to 1.5 px, a twentieth of a P5 pixel)."""
    g = torch.Generator().manual_seed(ratio)
    feats = [f.to(device).requires_grad_() for f in _features(g)]
    rois = _rois(g, 300).to(device)
    level = torch.randint(0, 4, (300,), generator=g).to(device)
    ours = sparse_roi_align(feats, rois, level, SCALES, 7, ratio, aligned=aligned)
    ref = _torchvision_per_level(feats, rois, level, 7, ratio, aligned=aligned)
    assert_pooled_and_grads_close(ours, ref, feats, g)  # float rounding of the weights differs


def _clipped_rois(g, r, n=3, size=(224.0, 160.0)):
    """RoIs as the RoI heads see them: clipped to the image (here the whole padded input), degenerate ones
    included, many touching an edge."""
    rois = _rois(g, r, n, size)
    rois[:, 1:].clamp_(min=0)
    rois[:, [1, 3]] = rois[:, [1, 3]].clamp(max=size[0])
    rois[:, [2, 4]] = rois[:, [2, 4]].clamp(max=size[1])
    rois[:5, 1:] = torch.tensor([[0.0, 0.0, 0.0, 0.0], [224.0, 160.0, 224.0, 160.0], [0.0, 150.0, 224.0, 160.0],
                                 [220.0, 0.0, 224.0, 160.0], [3.0, 3.0, 3.0, 90.0]])  # fmt: skip
    return rois


@pytest.mark.parametrize("ratio", [1, 2, 0])
def test_packed_roi_align_equals_torchvision_values_and_gradients(ratio, device):
    """The levels stacked into one map, one roi_align call: torchvision's per-level values and gradients (aligned),
    for RoIs on every edge of the maps; 0 = torchvision's adaptive sampling."""
    g = torch.Generator().manual_seed(10 + ratio)
    feats = [f.to(device).requires_grad_() for f in _features(g)]
    rois = _clipped_rois(g, 400).to(device)
    level = torch.randint(0, 4, (400,), generator=g).to(device)
    ours = packed_roi_align(feats, rois, level, SCALES, 7, ratio)
    ref = _torchvision_per_level(feats, rois, level, 7, ratio)
    assert_pooled_and_grads_close(ours, ref, feats, g)  # the shifted coordinates round differently


def test_sparse_roi_align_hand_computed_linear_map():
    # bilinear interpolation of a linear map is exact: each bin is the map at the mean of its samples
    h, w = 10, 12
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    fmap = (xs + 100 * ys).view(1, 1, h, w)
    rois = torch.tensor([[0.0, 8.0, 4.0, 24.0, 20.0]])  # at scale 1/4: x 1.5..5.5, y 0.5..4.5 after -0.5
    out = sparse_roi_align([fmap], rois, torch.tensor([0]), [0.25], 2, 2)
    # 2x2 bins of 2x2 feature pixels; bin centres x = 2.5, 4.5 and y = 1.5, 3.5
    expected = torch.tensor([[2.5 + 150, 4.5 + 150], [2.5 + 350, 4.5 + 350]])
    torch.testing.assert_close(out[0, 0], expected)


def test_sparse_roi_align_no_rois_and_dtype():
    g = torch.Generator().manual_seed(0)
    feats = [f.bfloat16() for f in _features(g)]
    empty = sparse_roi_align(feats, torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), SCALES, 7, 2)
    assert empty.shape == (0, 5, 7, 7)
    with torch.autocast("cpu", torch.bfloat16):  # the sparse product has no bf16 kernel: must run in fp32
        out = sparse_roi_align(feats, _rois(g, 4), torch.zeros(4, dtype=torch.long), SCALES, 7, 2)
    assert out.dtype == torch.float32  # as torchvision's autocast rule for roi_align
    double = sparse_roi_align([f.double() for f in feats], _rois(g, 4).double(), torch.zeros(4, dtype=torch.long), SCALES, 7, 2)
    assert double.dtype == torch.float64
    with pytest.raises(ValueError, match="sampling_ratio"):
        sparse_roi_align(feats, _rois(g, 4), torch.zeros(4, dtype=torch.long), SCALES, 7, 0)


def test_choose_ops_picks_a_pooler_and_all_give_the_same_values():
    mapper = LevelMapper(canonical_size=224, canonical_level=4)
    g = torch.Generator().manual_seed(1)
    feats = _features(g)
    boxes = _rois(g, 6, n=1)[:, 1:].unsqueeze(0)
    outs = {}
    for pool, ratio, cpu_choice, cuda_choice in [
        ("auto", 2, sparse_roi_align, packed_roi_align), ("sparse", 2, sparse_roi_align, sparse_roi_align),
        ("torchvision", 2, per_level_roi_align, per_level_roi_align), ("auto", 0, per_level_roi_align, packed_roi_align),
        ("packed", 2, packed_roi_align, packed_roi_align), ("by_mask", 2, by_mask_roi_align, by_mask_roi_align),
    ]:
        assert choose_ops("cpu", pool=pool, sampling_ratio=ratio).pool is cpu_choice
        assert choose_ops("cuda", pool=pool, sampling_ratio=ratio, triton=False).pool is cuda_choice
        assert choose_ops("cuda", "export", pool=pool, sampling_ratio=ratio).pool is by_mask_roi_align
        pooler = MultiScaleRoIAlign((4, 8, 16, 32), 7, ratio, mapper, pool=cpu_choice)
        outs[pool, ratio] = pooler([f[:1] for f in feats], boxes)
    for key in outs:  # not the packed map: these boxes reach past the image (its test clips them)
        if key[1] == 2 and key[0] != "packed":
            torch.testing.assert_close(outs[key], outs["torchvision", 2], rtol=1e-5, atol=1e-5)
    # aligned=False: the same as torchvision's detection pooler
    from torchvision.ops import MultiScaleRoIAlign as TorchvisionPooler

    reference = TorchvisionPooler(["0", "1", "2", "3"], 7, 2)
    expected = reference({str(i): f[:1] for i, f in enumerate(feats)}, [boxes[0]], [(160, 224)])
    mapper = LevelMapper(canonical_size=224, canonical_level=4, eps_in_log=False)
    for pool in (sparse_roi_align, per_level_roi_align, by_mask_roi_align):
        pooler = MultiScaleRoIAlign((4, 8, 16, 32), 7, 2, mapper, pool=pool, aligned=False)
        torch.testing.assert_close(pooler([f[:1] for f in feats], boxes), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(pooler([f[:1] for f in feats], boxes), outs["auto", 2], atol=1e-3)
    assert choose_ops("cuda", aligned=False, triton=False).pool is packed_roi_align  # either alignment (issue 28)
    with pytest.raises(ValueError, match="sampling ratio"):
        choose_ops("cpu", pool="sparse", sampling_ratio=0)
    with pytest.raises(ValueError, match="pool must be one of auto, torchvision, by_mask, sparse, packed"):
        choose_ops("cpu", pool="cuda")


def test_csr_transpose_with_repeated_entries():
    """The backward's transpose equals the dense transpose, also where a row repeats a column (a box
    clamped at a map edge puts several samples on one pixel)."""
    from fpn.model.ops.roi_pool import _csr, _transpose

    g = torch.Generator().manual_seed(0)
    rows, cols, per_row = 7, 5, 4
    col = torch.randint(0, cols, (rows * per_row,), generator=g)
    col[:4] = 3  # row 0: one column four times
    values = torch.rand(rows * per_row, generator=g)
    a = _csr(torch.arange(0, rows * per_row + 1, per_row), col, values, (rows, cols))
    at = _transpose(a, per_row)
    assert at.shape == (cols, rows)
    torch.testing.assert_close(at.to_dense(), a.to_dense().t())
    x = torch.randn(rows, 3, generator=g)
    torch.testing.assert_close(at @ x, a.to_dense().t() @ x)


@pytest.mark.parametrize("aligned", [True, False])
def test_pool_by_mask_equals_the_per_level_path(aligned):
    """The exportable pooling (a mask per level, no host sync) gives the per-level path's values, for either
    ``aligned``, with RoIs of several images and levels, and one level without RoIs."""
    mapper = LevelMapper(canonical_size=56, canonical_level=4)
    g = torch.Generator().manual_seed(2)
    feats = _features(g, n=2)
    boxes = _rois(g, 40, n=1)[:, 1:].reshape(2, 20, 4)
    boxes[:, :, 2:] = boxes[:, :, :2] + (boxes[:, :, 2:] - boxes[:, :, :2]).clamp(max=40)  # no RoI on P5
    pooler = MultiScaleRoIAlign((4, 8, 16, 32), 7, 2, mapper, pool=per_level_roi_align, aligned=aligned)
    per_level = pooler(feats, boxes)
    image = torch.arange(2.0).repeat_interleave(20)[:, None]
    rois = torch.cat([image, boxes.reshape(40, 4)], 1)
    level = mapper(rois[:, 1:]) - 2
    assert (level == 3).sum() == 0 and len(level.unique()) >= 2
    torch.testing.assert_close(by_mask_roi_align(feats, rois, level, SCALES, 7, 2, aligned), per_level, rtol=0, atol=0)
