"""Multi-level RoIAlign, one interface, several implementations.

``pool(features P2..P5 [(N, C, H_l, W_l)], rois (R, 5: image, x1, y1, x2, y2 in input pixels), level (R,) index
into features, scales, output_size, sampling_ratio, aligned) -> (R, C, s, s)``: each RoI pooled on its level as
``torchvision.ops.roi_align`` would (``aligned`` as there). All give the same values up to float rounding (tests).

* ``per_level_roi_align``: the reference, one ``roi_align`` call per level on that level's RoIs; the host reads the
  per-level counts (a sync on CUDA).
* ``by_mask_roi_align``: per level on the RoIs a mask selects, written into their rows: no host read of the counts
  (data-dependent sizes stay inside the graph); what an exported graph holds (ONNX RoiAlign).
* ``sparse_roi_align``: all levels in one sparse matrix product (the CPU's; ~2.5x faster forward + backward there).
* ``packed_roi_align``: the levels packed into one map, one ``roi_align`` call, no host sync (CUDA's; either
  alignment).

Shapes: R RoIs, L levels, C channels, s output size, g sampling ratio.

Sparse product (``sparse_roi_align``). Every output bin of RoIAlign is a fixed weighted sum of feature pixels:
``sampling_ratio**2`` bilinear samples, 4 pixels each, averaged. Stacking the pixels of every level and image as the rows of one
dense matrix F (sum of N*H*W over levels, C) makes pooling all RoIs on all levels ``A @ F`` with a sparse
A (R*s*s bins, 4*sampling_ratio**2 entries per row), and its gradient ``A.T @ grad``: two multithreaded
library products instead of torchvision's CPU kernels, whose backward scatters one sample at a time
(a third of a training step of the synthetic recipe on 2 CPU cores). On CUDA torchvision's kernels are
fast and this path would only add memory.

Same arithmetic as ``torchvision.ops.roi_align`` with a fixed ``sampling_ratio > 0``, for either value of
``aligned``: with ``aligned=True`` the box is shifted by half a pixel, with ``aligned=False`` (torchvision's
detection models) it is not and its sides are at least one feature pixel; a sample outside [-1, size]
contributes zero, coordinates are clamped to the feature map, and the bin value is the mean over its
samples (tests pin the equality, to float rounding).

Packed levels (``packed_roi_align``). Pooling each level's RoIs with its own ``roi_align`` call needs the number of
RoIs per level on the host, so the host waits for the GPU once per batch. Here the levels P2..P5 are stacked into one feature map (each level a band
of rows, framed by a copy of its edge pixels), every RoI's box is scaled by its level's ``1 / stride`` and shifted
into its band, and one call with ``spatial_scale=1`` pools them all; autograd carries the gradient back through
the stacking, the frame's copies onto the edge pixels they copy.

The frame reproduces what RoIAlign does at a map's edge: a sample in [-1, 0] or [size - 1, size] reads the edge
pixel (RoIAlign clamps there), and bilinear interpolation between an edge pixel and its copy is that pixel. Samples
beyond [-1, size] read zero in RoIAlign; they occur only for boxes that stick out of the padded input by more than
a feature pixel, which clipped proposals and ground truth do not with ``aligned=True`` (its half-pixel shift keeps
every sample of an in-image box inside (-1, size)). With ``aligned=False`` (torchvision's convention) a box is at
least one feature pixel wide, so one narrower than that near a map's far edge has samples past the edge: all its
samples on the map read the edge pixel, so it is pooled there and each bin scaled by the fraction of its samples
on the map (``_onto_the_edge``).
Same values as per-level ``roi_align`` up to float rounding of the shifted coordinates (tests).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from fpn.structures import to_device


def per_level_roi_align(features: list[Tensor], rois: Tensor, level: Tensor, scales: list[float], output_size: int,
                        sampling_ratio: int, aligned: bool = True) -> Tensor:  # fmt: skip
    """The reference: one ``roi_align`` call per level on that level's RoIs, sorted by level, split, put back."""
    order = torch.argsort(level, stable=True)
    counts = torch.bincount(level, minlength=len(features)).tolist()  # host sync: roi_align needs the sizes
    pooled = [
        roi_align(features[lvl], chunk, output_size, scales[lvl], sampling_ratio, aligned)
        for lvl, chunk in enumerate(rois[order].split(counts)) if chunk.shape[0] > 0
    ]
    if not pooled:
        return features[0].new_zeros((0, features[0].shape[1], output_size, output_size))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return torch.cat(pooled)[inverse]


def by_mask_roi_align(features: list[Tensor], rois: Tensor, level: Tensor, scales: list[float], output_size: int,
                      sampling_ratio: int, aligned: bool = True) -> Tensor:  # fmt: skip
    """Each level pools the RoIs its mask selects and writes them into their rows (no host read of the counts)."""
    c, s = features[0].shape[1], output_size
    out = rois.new_zeros((rois.shape[0], c, s, s))
    for lvl, feature in enumerate(features):
        index = torch.nonzero(level == lvl).squeeze(1)  # (R_l,) RoIs of this level
        pooled = roi_align(feature, rois[index], s, scales[lvl], sampling_ratio, aligned)
        out = out.index_put((index,), pooled.to(out.dtype))
    return out


def _axis_weights(coord: Tensor, size: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear neighbours along one axis of sample coordinates ``coord`` (R, s, g) on maps of ``size``
    (R, 1, 1): (low index, high index, low weight, high weight), weights 0 for samples off the map."""
    outside = (coord < -1.0) | (coord > size)
    coord = coord.clamp(min=0.0)
    low = torch.minimum(coord.floor(), size - 1)
    high = torch.minimum(low + 1, size - 1)
    frac = torch.minimum(coord, size - 1) - low  # at the last pixel both neighbours are that pixel
    inside = (~outside).to(coord.dtype)
    return low.long(), high.long(), (1.0 - frac) * inside, frac * inside


class _SparseProduct(torch.autograd.Function):
    """``a @ dense`` and its gradient ``a.T @ grad`` for a constant sparse CSR ``a`` with ``per_row`` entries
    in every row, in fp32 even under autocast (there are no bf16/fp16 sparse kernels; autocast would
    also apply to a backward run inside it)."""

    @staticmethod
    def forward(ctx, a: Tensor, per_row: int, dense: Tensor) -> Tensor:
        ctx.a, ctx.per_row = a, per_row
        with torch.autocast(dense.device.type, enabled=False):
            return a @ dense

    @staticmethod
    def backward(ctx, grad: Tensor):
        with torch.autocast(grad.device.type, enabled=False):
            return None, None, _transpose(ctx.a, ctx.per_row) @ grad.to(ctx.a.dtype)


def _transpose(a: Tensor, per_row: int) -> Tensor:
    """``a.T`` as a CSR matrix. ``a.t() @ x`` would do the same through a generic conversion that sorts
    64-bit indices and gathers them again (7% of a training step of the synthetic recipe); with a constant
    number of entries per row, a stable sort of 32-bit column indices is all it needs."""
    rows, cols = a.shape
    col = a.col_indices()
    order = torch.argsort(col.int(), stable=True)  # entries grouped by column, row-major inside a column
    crow = torch.zeros(cols + 1, dtype=torch.int64, device=a.device)
    torch.cumsum(torch.bincount(col, minlength=cols), 0, out=crow[1:])
    return _csr(crow, order.div(per_row, rounding_mode="floor"), a.values()[order], (cols, rows))


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def sparse_roi_align(features: list[Tensor], rois: Tensor, level: Tensor, scales: list[float], output_size: int,
                     sampling_ratio: int, aligned: bool = True) -> Tensor:  # fmt: skip
    """Pool ``rois`` (R, 5: image, x1, y1, x2, y2 in input pixels) from ``features[level[r]]`` (each
    (N, C, H_l, W_l)) at ``scales[level[r]]``: (R, C, s, s), float32 for half-precision features (as
    torchvision's autocast rule), else the features' dtype. ``aligned`` as in ``torchvision.ops.roi_align``."""
    if sampling_ratio <= 0:
        raise ValueError("sparse_roi_align needs a fixed sampling_ratio > 0")
    s = output_size
    c = features[0].shape[1]
    r = rois.shape[0]
    dtype = torch.promote_types(features[0].dtype, torch.float32)
    if r == 0:
        return features[0].new_zeros((0, c, s, s), dtype=dtype)
    shapes = [tuple(f.shape) for f in features]
    a, per_bin = _sparse_matrix(shapes, rois, level, scales, s, sampling_ratio, aligned, dtype)
    # F: every level's pixels as rows, channels last: (sum N*H*W, C)
    stacked = torch.cat([f.to(dtype).permute(0, 2, 3, 1).reshape(-1, c) for f in features])
    pooled = _SparseProduct.apply(a, per_bin, stacked)  # (R*s*s, C)
    return pooled.view(r, s, s, c).permute(0, 3, 1, 2)  # (R, C, s, s)


def _sparse_matrix(shapes: list[tuple[int, ...]], rois: Tensor, level: Tensor, scales: list[float], s: int, g: int,
                   aligned: bool, dtype: torch.dtype) -> tuple[Tensor, int]:  # fmt: skip
    """The sparse A of ``sparse_roi_align`` (CSR, R*s*s rows, one column per row of F) and its entries per row;
    ``shapes`` the levels' (N, C, H_l, W_l)."""
    n = shapes[0][0]
    r = rois.shape[0]
    device = rois.device
    rois = rois.to(dtype)
    heights = torch.tensor([shape[2] for shape in shapes], device=device)
    widths = torch.tensor([shape[3] for shape in shapes], device=device)
    level_rows = heights * widths * n  # rows of F per level
    level_start = torch.cumsum(level_rows, 0) - level_rows  # (L,) first row of each level in F
    scale = torch.tensor(scales, device=device, dtype=dtype)[level]  # (R,)

    box = rois[:, 1:] * scale[:, None]  # (R, 4) in feature pixels
    if aligned:
        box = box - 0.5  # pixel centres at +0.5
    roi_w = box[:, 2] - box[:, 0]  # (R,)
    roi_h = box[:, 3] - box[:, 1]
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / s, roi_h / s  # (R,)
    # sample offsets inside the box in bins: bin index + (sample + 0.5) / g, shape (s, g)
    steps = torch.arange(s, device=device, dtype=dtype)[:, None]
    steps = steps + (torch.arange(g, device=device, dtype=dtype)[None, :] + 0.5) / g
    xs = box[:, 0, None, None] + steps * bin_w[:, None, None]  # (R, s, g)
    ys = box[:, 1, None, None] + steps * bin_h[:, None, None]
    h = heights[level].to(dtype)[:, None, None]  # (R, 1, 1)
    w = widths[level].to(dtype)[:, None, None]
    x_lo, x_hi, wx_lo, wx_hi = _axis_weights(xs, w)
    y_lo, y_hi, wy_lo, wy_hi = _axis_weights(ys, h)

    # A's entries, laid out (R, s_y, s_x, g_y, g_x, 4 corners) so each bin's 4*g*g entries are contiguous
    shape = (r, s, 1, g, 1, 4)
    shape_x = (r, 1, s, 1, g, 4)
    y_idx = torch.stack((y_lo, y_lo, y_hi, y_hi), -1).view(shape)
    x_idx = torch.stack((x_lo, x_hi, x_lo, x_hi), -1).view(shape_x)
    y_wt = torch.stack((wy_lo, wy_lo, wy_hi, wy_hi), -1).view(shape)
    x_wt = torch.stack((wx_lo, wx_hi, wx_lo, wx_hi), -1).view(shape_x)
    image = rois[:, 0].long()
    first_row = (level_start[level] + image * heights[level] * widths[level]).view(r, 1, 1, 1, 1, 1)
    columns = (first_row + y_idx * widths[level].view(r, 1, 1, 1, 1, 1) + x_idx).reshape(-1)
    values = (y_wt * x_wt / (g * g)).reshape(-1)
    per_bin = 4 * g * g
    crow = torch.arange(0, r * s * s * per_bin + 1, per_bin, device=device)
    total_rows = int(sum(shape[0] * shape[2] * shape[3] for shape in shapes))
    return _csr(crow, columns, values, (r * s * s, total_rows)), per_bin


def _opaque_sparse(features: list[Tensor], rois: Tensor, level: Tensor, scales: list[float], output_size: int,
                   sampling_ratio: int, aligned: bool) -> Tensor:  # fmt: skip
    return sparse_roi_align(features, rois, level, scales, output_size, sampling_ratio, aligned).clone()


def _opaque_sparse_backward(grad: Tensor, features: list[Tensor], rois: Tensor, level: Tensor, scales: list[float],
                            output_size: int, sampling_ratio: int, aligned: bool) -> list[Tensor]:  # fmt: skip
    """The features' gradients of ``sparse_roi_align``: A (built again) transposed times the gradient, each
    level's rows back to (N, C, H_l, W_l) in its features' dtype."""
    s, c = output_size, features[0].shape[1]
    dtype = torch.promote_types(features[0].dtype, torch.float32)
    shapes = [tuple(f.shape) for f in features]
    a, per_bin = _sparse_matrix(shapes, rois, level, scales, s, sampling_ratio, aligned, dtype)
    with torch.autocast(grad.device.type, enabled=False):
        rows = _transpose(a, per_bin) @ grad.permute(0, 2, 3, 1).reshape(-1, c).to(dtype)  # (sum N*H*W, C)
    sizes = [shape[0] * shape[2] * shape[3] for shape in shapes]
    # each its own memory (outputs of an op never alias), channels-last strides as the eager gradient's
    return [part.view(shape[0], shape[2], shape[3], c).to(f.dtype, copy=True).permute(0, 3, 1, 2)
            for part, shape, f in zip(rows.split(sizes), shapes, features)]  # fmt: skip


if hasattr(torch.library, "custom_op"):  # torch >= 2.4: the sparse product is opaque to torch.compile
    _opaque_sparse = torch.library.custom_op("fpn::sparse_roi_align", mutates_args=())(_opaque_sparse)
    _opaque_sparse_backward = torch.library.custom_op("fpn::sparse_roi_align_backward",
                                                      mutates_args=())(_opaque_sparse_backward)  # fmt: skip

    @_opaque_sparse.register_fake
    def _(features, rois, level, scales, output_size, sampling_ratio, aligned):
        s, c = output_size, features[0].shape[1]
        dtype = torch.promote_types(features[0].dtype, torch.float32)
        return rois.new_empty((rois.shape[0], s, s, c), dtype=dtype).permute(0, 3, 1, 2)  # as the eager view

    @_opaque_sparse_backward.register_fake
    def _(grad, features, rois, level, scales, output_size, sampling_ratio, aligned):
        return [f.new_empty((f.shape[0], f.shape[2], f.shape[3], f.shape[1])).permute(0, 3, 1, 2) for f in features]

    def _setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[0], inputs[1], inputs[2])
        ctx.levels, ctx.args = len(inputs[0]), inputs[3:]

    def _backward(ctx, grad):
        saved = ctx.saved_tensors
        features, rois, level = list(saved[:ctx.levels]), saved[ctx.levels], saved[ctx.levels + 1]
        grads = _opaque_sparse_backward(grad, features, rois, level, *ctx.args)
        return grads, None, None, None, None, None, None

    _opaque_sparse.register_autograd(_backward, setup_context=_setup)


def opaque_sparse_roi_align(features: list[Tensor], rois: Tensor, level: Tensor, scales: list[float],
                            output_size: int, sampling_ratio: int, aligned: bool = True) -> Tensor:  # fmt: skip
    """``sparse_roi_align`` as the custom op ``torch.ops.fpn.sparse_roi_align`` (its backward another), so that
    ``torch.compile(fullgraph=True)`` traces around the sparse matrices; the same values and gradients (A is
    built again for the backward)."""
    if sampling_ratio <= 0:
        raise ValueError("sparse_roi_align needs a fixed sampling_ratio > 0")
    return _opaque_sparse(list(features), rois, level, [float(x) for x in scales], int(output_size),
                          int(sampling_ratio), bool(aligned))  # fmt: skip


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
                     sampling_ratio: int, aligned: bool = True) -> Tensor:  # fmt: skip
    """Pool ``rois`` (R, 5: image, x1, y1, x2, y2 in input pixels, inside the padded input) from
    ``features[level[r]]`` (each (N, C, H_l, W_l)) at ``scales[level[r]]``, as ``torchvision.ops.roi_align(...,
    aligned)`` per level would: (R, C, s, s) in the features' dtype (float32 under autocast, as torchvision's rule
    for roi_align).

    ``aligned=False`` (torchvision's detection models: no half-pixel shift, sides at least one feature pixel): a box
    narrower than a pixel within a pixel of a map's far edge has samples past it, which read zero there. All its
    samples up to the edge read the edge pixel (RoIAlign clamps in the last pixel), so such a box is pooled at the
    edge (every sample on it) and each bin scaled by the fraction of its samples on the map: the same values."""
    packed, first_rows = pack_levels(features)
    scale = to_device(torch.tensor(scales, dtype=rois.dtype), rois.device)[level]  # (R,)
    row = to_device(torch.tensor(first_rows, dtype=rois.dtype), rois.device)[level]  # (R,)
    shift = torch.stack((torch.ones_like(row), row), dim=1).repeat(1, 2)  # (R, 4): x + 1 (the frame), y + band row
    boxes = rois[:, 1:] * scale[:, None]  # (R, 4) in level pixels
    fraction = None
    if not aligned:
        sizes = [(f.shape[-1], f.shape[-2]) for f in features]
        size = to_device(torch.tensor(sizes, dtype=rois.dtype), rois.device)[level].repeat(1, 2)  # (R, 4): W, H, W, H
        boxes, fraction = _onto_the_edge(boxes, size, output_size, sampling_ratio)
    pooled = roi_align(packed, torch.cat((rois[:, :1], boxes + shift), dim=1), output_size, 1.0, sampling_ratio,
                       aligned)  # fmt: skip
    return pooled if fraction is None else pooled * fraction.to(pooled.dtype)


def _onto_the_edge(boxes: Tensor, size: Tensor, s: int, sampling_ratio: int) -> tuple[Tensor, Tensor]:
    """aligned=False: boxes (R, 4) in level pixels on maps of ``size`` (R, 4: W, H, W, H) -> the boxes with each
    axis whose samples pass the far edge moved onto the edge pixel (start W - 1, width 1: every sample reads it),
    and (R, 1, s, s) the fraction of each bin's samples on the map (1 elsewhere). Such an axis has its box start
    within a pixel of the edge (the box is inside the map), so all its samples on the map read the edge pixel;
    with adaptive sampling its width (1, the minimum) gives one sample per bin."""
    g = sampling_ratio if sampling_ratio > 0 else 1
    start, extent = boxes[:, :2], (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0)  # (R, 2): x, y
    steps = torch.arange(s, dtype=boxes.dtype, device=boxes.device)[:, None]
    steps = (steps + (torch.arange(g, dtype=boxes.dtype, device=boxes.device) + 0.5) / g).reshape(-1)  # (s * g,)
    samples = start[:, :, None] + extent[:, :, None] / s * steps  # (R, 2, s * g): roi_align's sample coordinates
    on_map = (samples <= size[:, :2, None]).to(boxes.dtype).view(-1, 2, s, g).mean(-1)  # (R, 2, s)
    past = on_map.amin(-1) < 1  # (R, 2): an axis with samples past the edge
    edge = size[:, :2] - 1
    moved = torch.where(past, edge, start)
    boxes = torch.cat((moved, torch.where(past, edge, boxes[:, 2:])), dim=1)  # width 0: roi_align makes it 1
    return boxes, (on_map[:, 1, :, None] * on_map[:, 0, None, :])[:, None]  # (R, 1, s, s): rows (y) x columns (x)
