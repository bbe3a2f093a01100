"""Anchor boxes for the pyramid levels P2..P6.

Convention (the same as torchvision and detectron2): on a level with stride ``s`` the anchors of
feature cell (x, y) are centred at ``(x * s, y * s)`` in input pixels (offset 0, i.e. the cell's
top-left input pixel corner, not its centre). One anchor per ratio ``r = h / w`` with area ``size^2``:
``w = size / sqrt(r)``, ``h = size * sqrt(r)`` (not rounded), so the anchor is
``(x*s - w/2, y*s - h/2, x*s + w/2, y*s + h/2)``.

Order, matching the RPN head's flattening: level by level; inside a level row-major over cells
(y, then x), and the ratios in config order inside a cell. Index = offset_l + (y * W + x) * A + a.

torchvision's conventions, for converted models (``round_corners``, ``strides_from_input``): the cell
anchor's corners are rounded to integers (computed in float32 as torchvision does: 46 x 22 for size 32,
ratio 0.5, instead of 45.25 x 22.63), and a level's stride is the padded input size // the feature size
on each axis (for a padded input 288 px high, P6 has 5 rows at stride 57, not 64).

Anchors depend only on the feature-map sizes (and strides), so they are cached per (sizes, strides,
device) unless built with ``cache=False`` (an exported graph computes them); a padded batch shares one set of
anchors for all its images. They are computed on the features' device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_MAX_CACHE = 32  # distinct input sizes seen (multi-scale training, test sizes); cleared when exceeded


class AnchorGenerator:
    def __init__(self, sizes: tuple[float, ...], ratios: tuple[float, ...], strides: tuple[int, ...],
                 round_corners: bool = False, strides_from_input: bool = False, cache: bool = True):
        if len(sizes) != len(strides):
            raise ValueError(f"one anchor size per level is needed: {len(sizes)} sizes for {len(strides)} levels")
        self.strides = tuple(int(s) for s in strides)
        self.round_corners = round_corners
        self.strides_from_input = strides_from_input
        cell = self._rounded_cell_anchors if round_corners else self._cell_anchors
        self.cell_anchors = [cell(float(size), ratios) for size in sizes]  # each (A, 4)
        self.num_anchors_per_cell = len(ratios)
        # (sizes, strides, device) -> anchors; None: not cached
        self.cache: dict[tuple, tuple[Tensor, list[int]]] | None = {} if cache else None

    @staticmethod
    def _cell_anchors(size: float, ratios: tuple[float, ...]) -> Tensor:
        rows = []
        for r in ratios:
            w = size / math.sqrt(r)
            h = size * math.sqrt(r)
            rows.append((-w / 2, -h / 2, w / 2, h / 2))
        return torch.tensor(rows, dtype=torch.float32)

    @staticmethod
    def _rounded_cell_anchors(size: float, ratios: tuple[float, ...]) -> Tensor:
        """torchvision's arithmetic: float32 h/w ratio factors sqrt(r) and 1 / sqrt(r), half sizes rounded."""
        h_ratios = torch.sqrt(torch.tensor(ratios, dtype=torch.float32))
        w_ratios = 1 / h_ratios
        ws, hs = w_ratios * size, h_ratios * size
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def __call__(
        self, feature_sizes: list[tuple[int, int]], device: torch.device, input_size: tuple[int, int] | None = None
    ) -> tuple[Tensor, list[int]]:
        """feature_sizes: (H_l, W_l) per level; input_size: (H, W) of the padded input (used with
        ``strides_from_input``) -> (anchors (A_total, 4) float32, anchors per level)."""
        strides = self._level_strides(feature_sizes, input_size)
        if self.cache is None:
            return self._build(feature_sizes, strides, device)
        key = (tuple(feature_sizes), tuple(strides), str(device))
        hit = self.cache.get(key)
        if hit is None:
            if len(self.cache) >= _MAX_CACHE:
                self.cache.clear()
            hit = self._build(feature_sizes, strides, device)
            self.cache[key] = hit
        return hit

    def _level_strides(
        self, feature_sizes: list[tuple[int, int]], input_size: tuple[int, int] | None
    ) -> list[tuple[int, int]]:
        """(stride_y, stride_x) per level: nominal, or input size // feature size (torchvision)."""
        if not self.strides_from_input:
            return [(s, s) for s in self.strides]
        if input_size is None:
            raise ValueError("strides_from_input needs the padded input size")
        return [(input_size[0] // h, input_size[1] // w) for h, w in feature_sizes]  # symbolic when exporting

    def _build(
        self, feature_sizes: list[tuple[int, int]], strides: list[tuple[int, int]], device: torch.device
    ) -> tuple[Tensor, list[int]]:
        per_level = []
        for (h, w), (stride_y, stride_x), cell in zip(feature_sizes, strides, self.cell_anchors):
            xs = torch.arange(w, dtype=torch.float32, device=device) * stride_x
            ys = torch.arange(h, dtype=torch.float32, device=device) * stride_y
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
            centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4), row-major
            # (H*W, 1, 4) + (1, A, 4) -> (H*W*A, 4): cell-major, ratio-minor
            per_level.append((centres + cell.to(device).unsqueeze(0)).reshape(-1, 4))
        return torch.cat(per_level), [a.shape[0] for a in per_level]
