"""Feature Pyramid Network neck: C2..C5 -> P2..P6 (strides 4, 8, 16, 32, 64).

* lateral 1x1 conv on each C_l to ``out_channels``;
* top-down: the coarser merged map is upsampled (nearest) to the lateral's exact size and added
  (``size=`` rather than ``scale_factor=2`` so odd map sizes, e.g. 38 -> 75, work);
* a 3x3 output conv on every merged map gives P2..P5;
* P6 = P5 subsampled with stride 2 (max-pool, kernel 1), used by the RPN only.

Driven by ``cfg.model.fpn_channels``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FPNNeck(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.out_channels = out_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)  # detectron2's "c2_xavier_fill"
                nn.init.zeros_(m.bias)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """[C2, C3, C4, C5] -> [P2, P3, P4, P5, P6]."""
        merged = self.lateral[-1](features[-1])
        outs = [self.output[-1](merged)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            merged = lateral + F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](merged))
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
