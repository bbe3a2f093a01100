"""fpn.perf.op_count: aten operations per call (a CPU proxy for kernel launches), and what the frozen-BatchNorm
fold saves in a training step."""

import torch
from torch import nn

from fpn.model.backbone import ResNetBackbone
from fpn.model.ops.frozen_bn import folded_conv_norm, plain_conv_norm, scale_and_shift
from fpn.perf.op_count import count_aten_ops


def test_counts_what_computes_forward_backward_and_views_apart():
    x, w = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(4, 3, 3, 3, requires_grad=True)
    counted = count_aten_ops(lambda: nn.functional.conv2d(x, w).relu().flatten(1).t().sum().backward())
    # forward: convolution, relu, sum; backward: ones_like (the seed), convolution_backward, threshold_backward;
    # the views (flatten's view, t) and their backward views launch nothing
    assert counted["ops"] == 6 and counted["views"] >= 2
    assert dict(map(tuple, counted["top"])) == {"convolution": 1, "relu": 1, "sum": 1, "ones_like": 1,
                                                "convolution_backward": 1, "threshold_backward": 1}  # fmt: skip


def _fold_every_forward(conv, norm, x):
    """The fold before issue 28: scale and shift formed from the statistics in every forward."""
    scale, shift = scale_and_shift(norm)
    return conv._conv_forward(x, conv.weight * scale.view(-1, 1, 1, 1), shift)


def test_the_kept_fold_costs_fewer_operations_per_training_step():
    """res18 (20 convolution + frozen BatchNorm pairs; stem + layer1 frozen: 5 pairs), forward + backward: the plain
    pairs cost a pass over each output; the fold formed in every forward costs 5 small operations per pair
    (eps, rsqrt, products, shift) and a product per weight; kept, a frozen pair costs nothing and a trainable
    one its product W * scale forward and backward."""
    counts = {}
    for name, conv_norm in [("plain", plain_conv_norm), ("every forward", _fold_every_forward),
                            ("kept", folded_conv_norm)]:  # fmt: skip
        torch.manual_seed(0)
        backbone = ResNetBackbone(18, norm="frozen_bn", freeze_at=1, width=8, conv_norm=conv_norm)
        x = torch.randn(1, 3, 32, 32, requires_grad=True)

        def step(backbone=backbone, x=x):
            sum(f.sum() for f in backbone(x)).backward()

        step()  # the kept fold is made in the first step
        counts[name] = count_aten_ops(step)["ops"]
    assert 0 < counts["kept"] < counts["every forward"] < counts["plain"]
    pairs, frozen = 20, 5
    # per pair: add (eps), rsqrt, mul (scale), mul + sub (shift); per frozen pair also its weight's product
    assert counts["every forward"] - counts["kept"] == 5 * pairs + frozen
