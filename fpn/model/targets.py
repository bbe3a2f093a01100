"""What the matchers read from the padded ground truth (``fpn.structures.GroundTruth``) beyond its boxes.

Crowd regions (COCO ``iscrowd=1``) are no ground truth to match, but anchors and proposals lying mostly inside
one are ignored by the matchers (neither positive nor background): :func:`crowd_ioa`.
"""

from __future__ import annotations

from torch import Tensor

from fpn.structures import GroundTruth
from fpn.model.box_ops import batched_ioa


def crowd_ioa(gt: GroundTruth, boxes: Tensor) -> Tensor | None:
    """boxes (N, B, 4) or (B, 4) -> (N, B): the largest fraction of each box's area inside a crowd region of
    its image (0 without one); None when the batch has no crowd regions (nothing computed)."""
    if gt.crowd_boxes is None:
        return None
    ioa = batched_ioa(gt.crowd_boxes, boxes)  # (N, M, B)
    return ioa.masked_fill(~gt.crowd_valid.unsqueeze(2), 0.0).amax(dim=1)
