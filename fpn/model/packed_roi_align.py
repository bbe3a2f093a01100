"""Multi-level RoIAlign as one ``torchvision.ops.roi_align`` call on the pyramid levels packed into one map: the
CUDA path of ``MultiScaleRoIAlign``, with no host sync.

Pooling each level's RoIs with its own ``roi_align`` call needs the number of RoIs per level on the host, so the
host waits for the GPU once per batch. Here the levels P2..P5 are stacked into one feature map (each level a band
of rows, framed by a copy of its edge pixels), every RoI's box is scaled by its level's ``1 / stride`` and shifted
into its band, and one call with ``spatial_scale=1`` pools them all; autograd carries the gradient back through
the stacking, the frame's copies onto the edge pixels they copy.

The frame reproduces what RoIAlign does at a map's edge: a sample in [-1, 0] or [size - 1, size] reads the edge
pixel (RoIAlign clamps there), and bilinear interpolation between an edge pixel and its copy is that pixel. Samples
beyond [-1, size] read zero in RoIAlign; they occur only for boxes that stick out of the padded input by more than
a feature pixel, which clipped proposals and ground truth do not with ``aligned=True`` (its half-pixel shift keeps
every sample of an in-image box inside (-1, size)). With ``aligned=False`` (torchvision's convention), boxes at least
one feature pixel wide can reach past the edge: the pooler uses torchvision's per-level calls there.
Same values as per-level ``roi_align`` up to float rounding of the shifted coordinates (tests).

Shapes: R RoIs, L levels, C channels, s output size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from fpn.structures import to_device


def pack_levels(features: list[Tensor]) -> tuple[Tensor, list[int]]:
    """[(N, C, H_l, W_l)] -> (packed (N, C, sum(H_l + 2), max(W_l) + 2), first row of each level in it): each
    level framed by one replicated pixel on every side, right-padded with zeros to the common width, stacked."""
    width = max(f.shape[-1] for f in features) + 2
    bands, first_rows, row = [], [], 0
    for f in features:
        band = F.pad(f, (1, 1, 1, 1), mode="replicate")  # (N, C, H + 2, W + 2): the edge pixels copied around
        bands.append(F.pad(band, (0, width - band.shape[-1])))  # zeros on the right to the common width
        first_rows.append(row + 1)
        row += band.shape[-2]
    return torch.cat(bands, dim=2), first_rows


def packed_roi_align(features: list[Tensor], rois: Tensor, level: Tensor, scales: list[float], output_size: int,
                     sampling_ratio: int) -> Tensor:  # fmt: skip
    """Pool ``rois`` (R, 5: image, x1, y1, x2, y2 in input pixels) from ``features[level[r]]`` (each (N, C, H_l,
    W_l)) at ``scales[level[r]]``, as ``torchvision.ops.roi_align(..., aligned=True)`` per level would: (R, C, s,
    s) in the features' dtype (float32 under autocast, as torchvision's rule for roi_align)."""
    packed, first_rows = pack_levels(features)
    scale = to_device(torch.tensor(scales, dtype=rois.dtype), rois.device)[level]  # (R,)
    row = to_device(torch.tensor(first_rows, dtype=rois.dtype), rois.device)[level]  # (R,)
    shift = torch.stack((torch.ones_like(row), row), dim=1).repeat(1, 2)  # (R, 4): x + 1 (the frame), y + band row
    boxes = rois[:, 1:] * scale[:, None] + shift
    return roi_align(packed, torch.cat((rois[:, :1], boxes), dim=1), output_size, 1.0, sampling_ratio, True)
