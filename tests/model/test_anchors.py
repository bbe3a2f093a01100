import math

import torch

from fpn.model.anchors import AnchorGenerator


def test_exact_anchors_small_feature_map():
    # one level, stride 4, size 16, ratios h/w = 0.25, 1, 4 -> (w, h) = (32, 8), (16, 16), (8, 32)
    gen = AnchorGenerator(sizes=(16,), ratios=(0.25, 1.0, 4.0), strides=(4,))
    anchors, counts = gen([(2, 3)], torch.device("cpu"))
    assert counts == [18]
    cell = [(-16.0, -4.0, 16.0, 4.0), (-8.0, -8.0, 8.0, 8.0), (-4.0, -16.0, 4.0, 16.0)]
    expected = []
    for y in range(2):  # row-major cells, centres at (x * stride, y * stride)
        for x in range(3):
            cx, cy = 4.0 * x, 4.0 * y
            expected += [(cx + a, cy + b, cx + c, cy + d) for a, b, c, d in cell]
    assert torch.equal(anchors, torch.tensor(expected))


def test_default_ratios_keep_area_and_levels_are_concatenated():
    gen = AnchorGenerator(sizes=(32, 64), ratios=(0.5, 1.0, 2.0), strides=(4, 8))
    anchors, counts = gen([(2, 2), (1, 1)], torch.device("cpu"))
    assert counts == [12, 3]
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    torch.testing.assert_close(w * h, torch.tensor([32.0**2] * 12 + [64.0**2] * 3))
    torch.testing.assert_close(h[:3] / w[:3], torch.tensor([0.5, 1.0, 2.0]))
    # second level's single cell is centred at (0, 0): ratio 0.5 anchor is 64*sqrt(2) wide
    r = math.sqrt(2.0)
    torch.testing.assert_close(anchors[12], torch.tensor([-32 * r, -16 * r, 32 * r, 16 * r]))


def test_anchors_are_cached_per_size():
    gen = AnchorGenerator(sizes=(32,), ratios=(1.0,), strides=(4,))
    a1, _ = gen([(4, 4)], torch.device("cpu"))
    a2, _ = gen([(4, 4)], torch.device("cpu"))
    a3, _ = gen([(4, 5)], torch.device("cpu"))
    assert a1 is a2
    assert a3.shape == (20, 4)


def test_torchvision_conventions_match_its_anchor_generator():
    """Rounded corners and strides = padded input // feature size: torchvision's anchors exactly, also where an
    odd-sized P5 gives P6 a stride under 64 (a 288 x 352 input: P5 9 x 11, P6 5 x 6, strides 57 and 58)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors
    from torchvision.models.detection.image_list import ImageList

    reference = TorchvisionAnchors(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    ours = AnchorGenerator((32, 64, 128, 256, 512), (0.5, 1.0, 2.0), (4, 8, 16, 32, 64), True, True)
    for h, w in [(288, 352), (320, 320), (800, 1088)]:
        sizes = [(-(-h // s), -(-w // s)) for s in (4, 8, 16, 32, 64)]
        expected = reference(ImageList(torch.zeros(1, 3, h, w), [(h, w)]), [torch.zeros(1, 1, *s) for s in sizes])[0]
        anchors, counts = ours(sizes, torch.device("cpu"), (h, w))
        assert torch.equal(anchors, expected) and sum(counts) == len(expected)
    assert ours.cell_anchors[0].tolist() == [[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11.0, -23.0, 11.0, 23.0]]
    plain = AnchorGenerator((32, 64, 128, 256, 512), (0.5, 1.0, 2.0), (4, 8, 16, 32, 64))
    assert not torch.equal(plain(sizes, torch.device("cpu"))[0], anchors)  # not rounded, nominal strides
