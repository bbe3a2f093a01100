"""Anchor boxes for the pyramid levels P2..P6.

Convention (the same as torchvision and detectron2): on a level with stride ``s`` the anchors of
feature cell (x, y) are centred at ``(x * s, y * s)`` in input pixels (offset 0, i.e. the cell's
top-left input pixel corner, not its centre). One anchor per ratio ``r = h / w`` with area ``size^2``:
``w = size / sqrt(r)``, ``h = size * sqrt(r)`` (not rounded), so the anchor is
``(x*s - w/2, y*s - h/2, x*s + w/2, y*s + h/2)``.

Order, matching the RPN head's flattening: level by level; inside a level row-major over cells
(y, then x), and the ratios in config order inside a cell. Index = offset_l + (y * W + x) * A + a.

Anchors depend only on the feature-map sizes, so they are cached per (sizes, device); a padded batch
shares one set of anchors for all its images.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_MAX_CACHE = 32  # distinct input sizes seen (multi-scale training, test sizes); cleared when exceeded


class AnchorGenerator:
    def __init__(self, sizes: tuple[float, ...], ratios: tuple[float, ...], strides: tuple[int, ...]):
        if len(sizes) != len(strides):
            raise ValueError(f"one anchor size per level is needed: {len(sizes)} sizes for {len(strides)} levels")
        self.strides = tuple(int(s) for s in strides)
        self.cell_anchors = [self._cell_anchors(float(size), ratios) for size in sizes]  # each (A, 4)
        self.num_anchors_per_cell = len(ratios)
        self._cache: dict[tuple, tuple[Tensor, list[int]]] = {}

    @staticmethod
    def _cell_anchors(size: float, ratios: tuple[float, ...]) -> Tensor:
        rows = []
        for r in ratios:
            w = size / math.sqrt(r)
            h = size * math.sqrt(r)
            rows.append((-w / 2, -h / 2, w / 2, h / 2))
        return torch.tensor(rows, dtype=torch.float32)

    def __call__(self, feature_sizes: list[tuple[int, int]], device: torch.device) -> tuple[Tensor, list[int]]:
        """feature_sizes: (H_l, W_l) per level -> (anchors (A_total, 4) float32, anchors per level)."""
        if torch.compiler.is_exporting():  # symbolic sizes: nothing to cache, the graph computes the anchors
            return self._build(feature_sizes, device)
        key = (tuple(feature_sizes), str(device))
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= _MAX_CACHE:
                self._cache.clear()
            hit = self._build(feature_sizes, device)
            self._cache[key] = hit
        return hit

    def _build(self, feature_sizes: list[tuple[int, int]], device: torch.device) -> tuple[Tensor, list[int]]:
        per_level = []
        for (h, w), stride, cell in zip(feature_sizes, self.strides, self.cell_anchors):
            xs = torch.arange(w, dtype=torch.float32) * stride
            ys = torch.arange(h, dtype=torch.float32) * stride
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
            centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4), row-major
            # (H*W, 1, 4) + (1, A, 4) -> (H*W*A, 4): cell-major, ratio-minor
            per_level.append((centres + cell.unsqueeze(0)).reshape(-1, 4))
        counts = [a.shape[0] for a in per_level]
        return torch.cat(per_level).to(device), counts
