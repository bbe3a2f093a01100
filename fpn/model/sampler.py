"""Balanced positive/negative sampling of labelled candidates, vectorised over the batch.

Per image: up to ``int(batch_per_image * positive_fraction)`` positives chosen uniformly at random,
then negatives fill the rest of ``batch_per_image`` (so an image with few positives gets more
negatives, one without objects gets only negatives). Ignored candidates (label -1) are never chosen.

Vectorised with random keys: every candidate gets a uniform key, non-members get -1, and ``topk``
picks the members with the largest keys, i.e. a uniform random subset, for all images at once. The
result has a fixed shape (N, S) with S = min(batch_per_image, B): positives first, then negatives,
then unused slots (``valid`` False; only when an image has too few candidates). No host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fpn.model.matcher import NEGATIVE, POSITIVE


@dataclass
class Sample:
    """Fixed-size sample, (N, S) each: ``index`` into the candidates (0 for unused slots), ``is_pos``,
    ``valid`` (slot holds a chosen positive or negative)."""

    index: Tensor
    is_pos: Tensor
    valid: Tensor


class BalancedSampler:
    def __init__(self, batch_per_image: int, positive_fraction: float):
        if batch_per_image < 1 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"bad sampler settings: batch {batch_per_image}, fraction {positive_fraction}")
        self.batch_per_image = batch_per_image
        self.max_pos = int(batch_per_image * positive_fraction)

    def __call__(self, labels: Tensor) -> Sample:
        """labels (N, B) in {1, 0, -1} -> Sample with S = min(batch_per_image, B) slots per image."""
        n, b = labels.shape
        s = min(self.batch_per_image, b)
        k_pos = min(self.max_pos, b)
        # (N, B) uniform in [0, 1), drawn candidate-major: a candidate's key depends on its column, not on B, so
        # padding the ground truth to more slots (appended columns) leaves every real candidate's key as it was
        keys = torch.rand(b, n, device=labels.device).t()
        # (N, k_pos) random positives, best keys first; a key of -1 marks "not a positive"
        pos_key, pos_idx = torch.where(labels == POSITIVE, keys, -1.0).topk(k_pos, dim=1)
        # (N, s) random negatives
        neg_key, neg_idx = torch.where(labels == NEGATIVE, keys, -1.0).topk(s, dim=1)
        num_pos = (pos_key >= 0).sum(dim=1, keepdim=True)  # (N, 1) positives actually taken

        # slot j < num_pos holds positive j, slot j >= num_pos holds negative j - num_pos
        slot = torch.arange(s, device=labels.device).expand(n, s)  # (N, S)
        is_pos = slot < num_pos
        from_pos = pos_idx.gather(1, slot.clamp(max=max(k_pos - 1, 0))) if k_pos > 0 else neg_idx
        neg_slot = (slot - num_pos).clamp(min=0)
        index = torch.where(is_pos, from_pos, neg_idx.gather(1, neg_slot))
        valid = is_pos | (neg_key.gather(1, neg_slot) >= 0)
        index = torch.where(valid, index, torch.zeros_like(index))
        return Sample(index=index, is_pos=is_pos, valid=valid)
