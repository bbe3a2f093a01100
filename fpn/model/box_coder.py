"""Box regression deltas (the R-CNN parameterisation).

For a reference box (anchor or proposal) with centre (x, y) and size (w, h) and a target box
(x*, y*, w*, h*) the deltas are::

    dx = wx * (x* - x) / w      dy = wy * (y* - y) / h
    dw = ww * log(w* / w)       dh = wh * log(h* / h)

``weights`` (wx, wy, ww, wh) scale the targets to a unit-ish range: (1, 1, 1, 1) for the RPN and
``cfg.model.bbox_reg_weights`` = (10, 10, 5, 5) for the box head (the seed's stds 0.1, 0.1, 0.2, 0.2).
Widths are ``x2 - x1`` (continuous pixels). ``decode`` clamps dw, dh at ``log(1000 / 16)`` before
``exp``, so a wild prediction gives a huge but finite box instead of inf/NaN (the seed's NaN losses).
Everything is computed in float32 whatever the input dtype (autocast-safe).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    def __init__(self, weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0), scale_clamp: float = DEFAULT_SCALE_CLAMP):
        if len(weights) != 4:
            raise ValueError(f"box coder weights must have 4 values, got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, reference: Tensor, target: Tensor) -> Tensor:
        """(..., 4) reference boxes and matching (..., 4) target boxes -> (..., 4) deltas."""
        reference = reference.float()
        target = target.float()
        wx, wy, ww, wh = self.weights
        # a degenerate box would give log(0); such pairs are never positives, the clamp only keeps
        # masked-out entries finite
        w = (reference[..., 2] - reference[..., 0]).clamp(min=1e-6)
        h = (reference[..., 3] - reference[..., 1]).clamp(min=1e-6)
        x = reference[..., 0] + 0.5 * w
        y = reference[..., 1] + 0.5 * h
        tw = (target[..., 2] - target[..., 0]).clamp(min=1e-6)
        th = (target[..., 3] - target[..., 1]).clamp(min=1e-6)
        tx = target[..., 0] + 0.5 * tw
        ty = target[..., 1] + 0.5 * th
        return torch.stack(
            (wx * (tx - x) / w, wy * (ty - y) / h, ww * torch.log(tw / w), wh * torch.log(th / h)), dim=-1
        )

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """(..., 4) deltas applied to (..., 4) reference boxes (broadcastable) -> (..., 4) boxes, float32."""
        deltas = deltas.float()
        reference = reference.float()
        wx, wy, ww, wh = self.weights
        w = reference[..., 2] - reference[..., 0]
        h = reference[..., 3] - reference[..., 1]
        x = reference[..., 0] + 0.5 * w
        y = reference[..., 1] + 0.5 * h
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[..., 3] / wh).clamp(max=self.scale_clamp)
        cx = x + dx * w
        cy = y + dy * h
        half_w = 0.5 * torch.exp(dw) * w
        half_h = 0.5 * torch.exp(dh) * h
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)
