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
