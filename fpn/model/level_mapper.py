"""Which pyramid level pools a RoI (FPN paper, eq. 1).

    k = floor(k0 + log2(sqrt(w * h) / s0 + eps)),  clamped to [min_level, max_level]

with canonical size ``s0`` (``cfg.model.roi_canonical_size``, 224 = an ImageNet-sized box) and
canonical level ``k0`` (``cfg.model.roi_canonical_level``, 4), measured in network-input pixels.
The eps keeps exact powers of two on their level despite float rounding in sqrt (112 -> 3, 224 -> 4,
448 -> 5) and makes empty boxes map to ``min_level`` instead of log(0). torchvision adds it to the level
instead (``eps_in_log=False``: ``floor(k0 + log2(sqrt(w * h) / s0) + eps)``, for converted models): the same
levels except for sizes within ~1e-6 relative below a power of two times s0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fpn.model.box_ops import box_area


class LevelMapper:
    def __init__(self, canonical_size: float = 224.0, canonical_level: int = 4, min_level: int = 2,
                 max_level: int = 5, eps: float = 1e-6, eps_in_log: bool = True):
        self.canonical_size = float(canonical_size)
        self.canonical_level = canonical_level
        self.min_level = min_level
        self.max_level = max_level
        self.eps = eps
        self.eps_in_log = eps_in_log

    def __call__(self, boxes: Tensor) -> Tensor:
        """(R, 4) boxes -> (R,) int64 pyramid level in [min_level, max_level]."""
        size = torch.sqrt(box_area(boxes.float()))
        if self.eps_in_log:
            level = torch.floor(self.canonical_level + torch.log2(size / self.canonical_size + self.eps))
        else:
            level = torch.floor(self.canonical_level + torch.log2(size / self.canonical_size) + self.eps)
        return level.clamp(self.min_level, self.max_level).to(torch.int64)
