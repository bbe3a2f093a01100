"""Image decoding and the detector's input transforms: resize, horizontal flip, normalisation.

Boxes are continuous pixel xyxy (see :mod:`fpn.data.voc`). Two resize rules (``cfg.data.resize``):

* ``fast`` (the default): the shorter side becomes ``scale`` unless the longer side would then exceed
  ``max_size`` (the seed's rule); the uint8 image is resized to ``round(h * f) x round(w * f)`` pixels and
  normalised afterwards, boxes are multiplied by ``f``, so the content may be off from ``boxes * f`` by under
  half a pixel at the far border;
* ``torchvision``: torchvision's ``GeneralizedRCNNTransform`` exactly: the image is normalised first (its
  arithmetic, ``(x / 255 - mean) / std``), then resized in float32 to ``floor(h * s) x floor(w * s)`` with
  ``s = min(scale / min(h, w), max_size / max(h, w))`` (what ``interpolate(recompute_scale_factor=True)``
  gives), and boxes are scaled per axis by new / old size. About 3x slower per image than ``fast``
  (docs/TORCHVISION.md).

Speed (one CPU core, VOC image 500x375 -> 800x600): JPEGs are decoded with libjpeg-turbo
(``torchvision.io.decode_jpeg``, 1.0 ms; PIL, 1.5 ms, is the fallback for other formats), resized in
uint8 with ``interpolate`` (bilinear, no antialias; 1.4 ms, vs 3.4 ms in float32), and converted to float
once, fused with the normalisation (0.8 ms, written straight into the padded batch by the loader).
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fpn.config import CAFFE_MEAN_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from fpn.errors import UserError

NORMALIZATIONS = ("imagenet", "caffe")
RESIZES = ("fast", "torchvision")


def read_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor (3, H, W); any failure is a UserError naming the file.

    EXIF orientation is not applied: VOC annotations refer to the stored pixel grid."""
    path = str(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"{path}: image not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read image ({e.strerror})") from None
    if data.size == 0:
        raise UserError(f"{path}: image file is empty")
    is_jpeg = data[:2].tobytes() == b"\xff\xd8"
    jpeg_error = None
    if is_jpeg and _decode_jpeg is not None:
        try:
            with warnings.catch_warnings():  # torchvision >= 0.29 warns on every call (moving to torchcodec)
                warnings.simplefilter("ignore", DeprecationWarning)
                return _decode_jpeg(torch.from_numpy(data), mode=_RGB)
        except RuntimeError as e:
            jpeg_error = str(e).rsplit(", ", 1)[-1].strip()  # drop torchvision's "decode_jpeg, file.cpp:171, "
    # other formats (a PNG named .jpg), or a JPEG torchvision cannot decode: PIL
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            rgb = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise UserError(f"{path}: cannot read image (not an image file)") from None
    except Exception as e:  # PIL raises many types for damaged data (OSError, SyntaxError, EOFError...)
        raise UserError(f"{path}: cannot read image ({jpeg_error or e})") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def _jpeg_decoder():
    """torchvision's libjpeg-turbo decoder (about 1.0 ms for a VOC image vs 1.5 ms with PIL), or None."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None, None
    return decode_jpeg, ImageReadMode.RGB


_decode_jpeg, _RGB = _jpeg_decoder()


def resize_factor(height: int, width: int, scale: int, max_size: int, resize: str = "fast") -> float:
    """The factor making the shorter side ``scale``, or the longer side ``max_size`` if that is smaller
    (``fast``: judged on the rounded long side; ``torchvision``: ``min(scale / short, max_size / long)``)."""
    if resize == "torchvision":
        return min(scale / min(height, width), max_size / max(height, width))
    factor = scale / min(height, width)
    if round(factor * max(height, width)) > max_size:
        factor = max_size / max(height, width)
    return factor


def resized_size(height: int, width: int, factor: float, resize: str = "fast") -> tuple[int, int]:
    """Pixel size (h, w) of an image resized by ``factor`` (at least 1 pixel per side): rounded (``fast``) or
    floored in double precision (``torchvision``, as ``interpolate`` computes it)."""
    size = math.floor if resize == "torchvision" else round
    return max(1, size(height * factor)), max(1, size(width * factor))


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (no antialias) of a (3, H, W) tensor, uint8 or float, to ``size`` = (h, w)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]


def hflip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Mirror continuous xyxy boxes in an image ``width`` pixels wide: x1' = W - x2, x2' = W - x1."""
    out = boxes.clone()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def _normalization_constants(mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(multiplier, offset) per channel so that ``x * multiplier - offset`` normalises 0..255 input."""
    if mode == "imagenet":
        std = torch.tensor(IMAGENET_STD_RGB).view(3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN_RGB).view(3, 1, 1)
        return 1.0 / (255.0 * std), mean / std
    if mode == "caffe":
        return torch.ones(3, 1, 1), torch.tensor(CAFFE_MEAN_BGR).view(3, 1, 1)
    raise UserError(f"config data.normalization: unknown '{mode}', choose one of: {', '.join(NORMALIZATIONS)}")


def normalize(image: torch.Tensor, mode: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 RGB (3, H, W) -> float32 network input, written into ``out`` (e.g. a view of a padded
    batch) when given. "imagenet": RGB, /255, minus mean, over std (torchvision weights); "caffe": BGR
    channel order, 0..255 range, minus CAFFE_MEAN_BGR, no std. A float image is taken as already
    normalised (the ``torchvision`` resize normalises before resizing) and only copied."""
    if image.is_floating_point():
        return image if out is None else out.copy_(image)
    mul, off = _normalization_constants(mode)
    if mode == "caffe":
        image = image.flip(0)
    if out is None:
        out = torch.empty(image.shape, dtype=torch.float32)
    out.copy_(image)  # the one uint8 -> float conversion
    if mode == "imagenet":
        out.mul_(mul)
    return out.sub_(off)


def normalize_like_torchvision(image: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 RGB (3, H, W) -> float32, bit for bit what torchvision's detection transform computes from
    ``image / 255`` ("imagenet": ``(x / 255 - mean) / std``; "caffe": BGR, 0..255, minus the means)."""
    if mode == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN_RGB).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD_RGB).view(3, 1, 1)
        return (image.float() / 255 - mean) / std
    _normalization_constants(mode)  # the error for an unknown mode
    return image.flip(0).float() - torch.tensor(CAFFE_MEAN_BGR).view(3, 1, 1)


def flip_resize(
    image: torch.Tensor, boxes: torch.Tensor | None, scale: int, max_size: int, flip: bool = False,
    resize: str = "fast",
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Geometric part of the input transform of an image (3, H, W) and its continuous xyxy ``boxes``
    (or None): optional mirror, then resize by :func:`resize_factor` under the ``resize`` rule. Returns
    (image (3, h, w) of the input dtype, boxes in its pixels, factor). The mirror is taken in original
    pixels; boxes are then scaled by the factor (``fast``) or per axis by new / old size in float32, as
    torchvision's ``resize_boxes`` (``torchvision``)."""
    height, width = image.shape[-2:]
    factor = resize_factor(height, width, scale, max_size, resize)
    if flip:
        image = image.flip(-1)
        if boxes is not None:
            boxes = hflip_boxes(boxes, width)
    size = resized_size(height, width, factor, resize)
    image = resize_image(image, size)
    if boxes is not None:
        if resize == "torchvision":
            ratio = torch.tensor(size[::-1], dtype=torch.float32) / torch.tensor((width, height), dtype=torch.float32)
            boxes = boxes * ratio.repeat(2)  # (x, y, x, y) ratios
        else:
            boxes = boxes * factor
    return image, boxes, factor


def transform_image(
    image: torch.Tensor, boxes: torch.Tensor | None, scale: int, max_size: int, normalization: str,
    flip: bool = False, resize: str = "fast",
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """The per-image input transform of a uint8 RGB image (3, H, W) up to batching. ``fast``:
    :func:`flip_resize` of the uint8 image, which stays uint8 (:func:`normalize` converts it later, fused
    with the copy into the padded batch); ``torchvision``: :func:`normalize_like_torchvision`, then
    :func:`flip_resize` of the float image. Returns (image, boxes in its pixels or None, factor)."""
    if resize not in RESIZES:
        raise UserError(f"config data.resize: unknown '{resize}', choose one of: {', '.join(RESIZES)}")
    if resize == "torchvision":
        image = normalize_like_torchvision(image, normalization)
    return flip_resize(image, boxes, scale, max_size, flip, resize)


def prepare(
    image: torch.Tensor,
    boxes: torch.Tensor | None,
    scale: int,
    max_size: int,
    normalization: str,
    flip: bool = False,
    resize: str = "fast",
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """The whole input transform of one uint8 RGB image (3, H, W): :func:`transform_image` then
    :func:`normalize`. Returns (float32 image (3, h, w), boxes in its pixels or None, factor)."""
    image, boxes, factor = transform_image(image, boxes, scale, max_size, normalization, flip, resize)
    return normalize(image, normalization), boxes, factor


def pick_scales(scales: Sequence[int], n: int, rng: np.random.Generator) -> list[int]:
    """One training scale per image, drawn uniformly from ``scales`` with ``rng`` (no draw when only one)."""
    if len(scales) == 1:
        return [int(scales[0])] * n
    return [int(scales[i]) for i in rng.integers(len(scales), size=n)]


def unnormalize(image: torch.Tensor, mode: str) -> torch.Tensor:
    """Inverse of :func:`normalize` (for drawing): float (3, H, W) -> uint8 RGB."""
    mul, off = _normalization_constants(mode)
    x = (image + off) / mul
    if mode == "caffe":
        x = x.flip(0)
    return x.round().clamp_(0, 255).to(torch.uint8)


def check_scales(scales: Sequence[int], max_size: int, where: str = "config data.train_scales") -> None:
    """UserError unless the scales are positive integers and max_size is positive."""
    if not scales or any(not isinstance(s, (int, np.integer)) or s <= 0 for s in scales):
        raise UserError(f"{where}: expected positive integers, got {tuple(scales)!r}")
    if max_size <= 0 or not math.isfinite(max_size):
        raise UserError(f"config data.max_size: expected a positive integer, got {max_size!r}")
