"""The packed RoIAlign with torchvision's detection convention (``aligned=False``): torchvision's per-level
``roi_align`` and its ``MultiScaleRoIAlign`` (issue 28: converted torchvision weights pool unaligned)."""

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign as TorchvisionPooler
from torchvision.ops import roi_align

from detector_helpers import assert_pooled_and_grads_close

from fpn.model.level_mapper import LevelMapper
from fpn.model.ops.roi_pool import packed_roi_align
from fpn.model.roi_heads import MultiScaleRoIAlign

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
SIZE = (224.0, 160.0)  # the padded input (W, H): maps 56x40, 28x20, 14x10, 7x5


def _features(g, n=3, c=5, h=40, w=56):
    return [torch.randn(n, c, h // 2**i, w // 2**i, generator=g) for i in range(4)]


def _rois(g, r, n=3):
    """Boxes inside the input as the RoI heads see them, from a twentieth of a P5 pixel to most of the image, a
    third of them narrower than a pixel of their level hugging the far edges (samples past the map)."""
    xy = torch.rand(r, 2, generator=g) * torch.tensor(SIZE)
    wh = torch.exp(torch.rand(r, 2, generator=g) * 5) + 0.5
    boxes = torch.cat([xy, xy + wh], 1)
    edge = torch.arange(r) % 3 == 0
    tiny = torch.rand(int(edge.sum()), 2, generator=g) * 3.5  # under 4 px: under a pixel of every level
    far = torch.tensor(SIZE) - torch.rand(int(edge.sum()), 2, generator=g) * 3.9
    boxes[edge] = torch.cat([far - tiny, far], 1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, SIZE[0])
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, SIZE[1])
    boxes[:4] = torch.tensor([[223.5, 159.5, 224.0, 160.0], [220.0, 0.0, 224.0, 160.0], [0.0, 159.9, 224.0, 160.0],
                              [224.0, 160.0, 224.0, 160.0]])  # fmt: skip
    return torch.cat([torch.randint(0, n, (r, 1), generator=g).float(), boxes], 1)


def _per_level(feats, rois, level, ratio):
    out = feats[0].new_zeros(rois.shape[0], feats[0].shape[1], 7, 7)
    for lvl in range(len(feats)):
        sel = level == lvl
        out[sel] = roi_align(feats[lvl], rois[sel], 7, SCALES[lvl], ratio, aligned=False)
    return out


@pytest.mark.parametrize("ratio", [1, 2, 0])
def test_packed_unaligned_equals_torchvision_values_and_gradients(ratio, device):
    """Every level, RoIs with samples past a map's far edge (which read zero in torchvision), adaptive sampling (0):
    the same values and gradients, to float rounding of the shifted coordinates (1e-4)."""
    g = torch.Generator().manual_seed(20 + ratio)
    feats = [f.to(device).requires_grad_() for f in _features(g)]
    rois = _rois(g, 450).to(device)
    level = torch.randint(0, 4, (450,), generator=g).to(device)
    ours = packed_roi_align(feats, rois, level, SCALES, 7, ratio, aligned=False)
    ref = _per_level(feats, rois, level, ratio)
    # the test means something: some bins lose samples past the edge, and the aligned pooler gives other values
    partial = (ref == 0).flatten(1).any(1) & ~(ref == 0).flatten(1).all(1)
    assert partial.sum() > 10
    assert not torch.allclose(packed_roi_align(feats, rois, level, SCALES, 7, ratio), ref, atol=1e-2)
    assert_pooled_and_grads_close(ours, ref, feats, g)


def test_packed_unaligned_in_the_pooler_equals_torchvisions_multiscale_pooler():
    g = torch.Generator().manual_seed(3)
    feats = [f[:1] for f in _features(g)]
    boxes = _rois(g, 60, n=1)[:, 1:]
    reference = TorchvisionPooler(["0", "1", "2", "3"], 7, 2)
    expected = reference({str(i): f for i, f in enumerate(feats)}, [boxes], [(160, 224)])
    mapper = LevelMapper(canonical_size=224, canonical_level=4, eps_in_log=False)
    pooler = MultiScaleRoIAlign((4, 8, 16, 32), 7, 2, mapper, pool=packed_roi_align, aligned=False)
    torch.testing.assert_close(pooler(feats, boxes[None]), expected, rtol=1e-4, atol=1e-4)
