"""Image decoding and the detector's input transforms: resize, horizontal flip, normalisation, batching.

One implementation serves training, ``fpn test``, ``fpn demo``, the Python API (``fpn.Detector``) and the
exported graph: :func:`flip_resize` (geometry), :func:`batch_images` (zero padding to a :class:`PadRule` size)
and :func:`normalize_batch` (the float network input, after the copy to the device; :func:`normalize` per
image), and :class:`GraphInputTransform`, the same steps as graph operations for ``fpn export``.

Boxes are continuous pixel xyxy (see :mod:`fpn.data.voc`). Two resize rules (``cfg.data.resize``):

* ``fast`` (the default): the shorter side becomes ``scale`` unless the longer side would then exceed
  ``max_size`` (the seed's rule); the image is resized to ``round(h * f) x round(w * f)`` pixels
  (:func:`target_size`, exact integer arithmetic) and normalised afterwards, boxes are multiplied by ``f``, so
  the content may be off from ``boxes * f`` by under half a pixel at the far border;
* ``torchvision``: torchvision's ``GeneralizedRCNNTransform`` exactly: the image is normalised first (its
  arithmetic, ``(x / 255 - mean) / std``), then resized in float32 to ``floor(h * s) x floor(w * s)`` with
  ``s = min(scale / min(h, w), max_size / max(h, w))`` (what ``interpolate(recompute_scale_factor=True)``
  gives), and boxes are scaled per axis by new / old size. About 3x slower per image than ``fast``
  (docs/TORCHVISION.md).

Speed (one CPU core, VOC image 500x375 -> 800x600): JPEGs are decoded with libjpeg-turbo
(``torchvision.io.decode_jpeg``, 1.0 ms; PIL, 1.5 ms, is the fallback for other formats), resized in
uint8 with ``interpolate`` (bilinear, no antialias; 1.4 ms, vs 3.4 ms in float32) for training, copied into
the zero-padded uint8 batch (:func:`batch_images`, to a :class:`PadRule` size) and converted to float once on
the device the model runs on, fused with the normalisation (:func:`normalize_batch`).
At test time (test loader, demo, API, export) images are resized in float32, as an exported graph does.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpn.config import CAFFE_MEAN_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, NORMALIZATIONS, RESIZES
from fpn.errors import UserError



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


def _round_div(a, b):
    """``round(a / b)`` with halves to even (Python's ``round``) for integers a >= 0, b > 0, in integer
    arithmetic only: it runs on Python ints and on int64 tensors inside an exported graph alike."""
    q = a // b
    # the remainder rounds up when 2r > b, or 2r == b and q is odd: one floor division, no branch
    return q + (2 * (a % b) + b - 1 + q % 2) // (2 * b)


def target_size(height, width, scale: int, max_size: int):
    """The pixel size (h, w) of an image resized by ``resize_factor``: ``round(h * f), round(w * f)`` computed
    exactly, in integer arithmetic without branches, on Python ints or int64 tensors (an exported graph
    computes it from its input's shape). Each side is the smaller of its size at "shorter side = scale" and at
    "longer side = max_size", since whichever factor ``resize_factor`` picks gives the smaller image. Equal to
    ``resized_size(h, w, resize_factor(...))`` except where the float product lands on the wrong side of an
    exact half (144 x 219 at scale 600: 219 * 600 / 144 = 912.5, so 912, where floats give 913)."""
    tensors = isinstance(height, Tensor)
    lo, hi = (torch.minimum, torch.maximum) if tensors else (min, max)
    short, long = lo(height, width), hi(height, width)

    def side(n):
        size = lo(_round_div(n * scale, short), _round_div(n * max_size, long))
        return size.clamp(min=1) if tensors else max(1, size)

    return side(height), side(width)


def resize_image(image: torch.Tensor, size: tuple[int, int], float_resize: bool = False) -> torch.Tensor:
    """Bilinear resize (no antialias) of a (3, H, W) tensor, uint8 or float, to ``size`` = (h, w).

    A uint8 image is resized in uint8 (torch's fixed-point kernel: 2.5x faster than in float, the training
    loader's choice), or with ``float_resize`` in float32 (values 0..255 not rounded to whole grey levels): the
    arithmetic an exported graph has, so test-time inputs are the same in PyTorch and in ONNX Runtime."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    if float_resize:
        image = image.float()
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
    channel order, 0..255 range, minus CAFFE_MEAN_BGR, no std. A float image holds the same 0..255 values
    (resized in float, ``resize_image``)."""
    mul, off = _normalization_constants(mode)
    if mode == "caffe":
        image = image.flip(0)
    if out is None:
        out = torch.empty(image.shape, dtype=torch.float32)
    out.copy_(image)  # the one uint8 -> float conversion
    if mode == "imagenet":
        out.mul_(mul)
    return out.sub_(off)


def normalize_batch(
    pixels: torch.Tensor, image_sizes: Sequence[tuple[int, int]], mode: str, to_device=None
) -> torch.Tensor:
    """A padded batch of 0..255 pixels (N, 3, H, W), uint8 or float32 (what :func:`batch_images` gives with
    ``normalization=None``) -> the float32 network input on the same device: :func:`normalize`'s arithmetic
    (the same operations, so the same bits as normalising each image on the host), zeros beyond each image's
    (h, w). What the loader's ``Batch.to`` and the Python API run after the copy: the pixels travel as uint8
    (training) and are normalised where the model runs. ``to_device(tensor, device)`` moves the (N, 2) sizes
    (default: :func:`fpn.structures.to_device`)."""
    from fpn.structures import to_device as default_move

    device = pixels.device
    mul, off = (t.to(device) for t in _normalization_constants(mode))
    out = torch.empty(pixels.shape, dtype=torch.float32, device=device)
    # normalize's operations: the exact uint8 -> float copy, then * mul, - off (a mixed-dtype torch.mul is ~20x
    # slower on a CPU than the copy and an in-place float multiply)
    out.copy_(pixels.flip(1) if mode == "caffe" else pixels)
    if mode == "imagenet":
        out.mul_(mul)
    out.sub_(off)
    height, width = out.shape[-2:]
    if device.type == "cpu":  # the padding only, per image: the cheapest on a host
        for i, (h, w) in enumerate(image_sizes):
            out[i, :, h:, :].zero_()
            out[i, :, :h, w:].zero_()
        return out
    # on a device: one mask for the batch (a few kernels, not two per image; no host-made shapes)
    sizes = (to_device or default_move)(torch.tensor(list(image_sizes), dtype=torch.int64).reshape(-1, 2), device)
    inside = (torch.arange(height, device=device) < sizes[:, :1]).view(-1, 1, height, 1) & (
        torch.arange(width, device=device) < sizes[:, 1:]
    ).view(-1, 1, 1, width)  # (N, 1, H, W)
    return out.masked_fill_(~inside, 0.0)


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
    float_resize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Geometric part of the input transform of an image (3, H, W) and its continuous xyxy ``boxes``
    (or None): optional mirror, then resize under the ``resize`` rule (``fast``: to :func:`target_size`, a uint8
    image in uint8 unless ``float_resize``, see :func:`resize_image`; test time resizes in float). Returns
    (image (3, h, w) of the input dtype, or float32 when resized in float, boxes in its pixels, factor). The
    mirror is taken in original pixels; boxes are then scaled by the factor (``fast``) or per axis by new / old
    size in float32, as torchvision's ``resize_boxes`` (``torchvision``)."""
    height, width = image.shape[-2:]
    factor = resize_factor(height, width, scale, max_size, resize)
    if flip:
        image = image.flip(-1)
        if boxes is not None:
            boxes = hflip_boxes(boxes, width)
    if resize == "torchvision":
        size = resized_size(height, width, factor, resize)
    else:
        size = target_size(height, width, scale, max_size)
    image = resize_image(image, size, float_resize)
    if boxes is not None:
        if resize == "torchvision":
            ratio = torch.tensor(size[::-1], dtype=torch.float32) / torch.tensor((width, height), dtype=torch.float32)
            boxes = boxes * ratio.repeat(2)  # (x, y, x, y) ratios
        else:
            boxes = boxes * factor
    return image, boxes, factor


def transform_image(
    image: torch.Tensor, boxes: torch.Tensor | None, scale: int, max_size: int, normalization: str,
    flip: bool = False, resize: str = "fast", float_resize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """The per-image input transform of a uint8 RGB image (3, H, W) up to batching. ``fast``:
    :func:`flip_resize` of the uint8 image, which stays 0..255 (uint8, or float32 with ``float_resize``;
    :func:`batch_images` pads it, :func:`normalize_batch` normalises the batch); ``torchvision``:
    :func:`normalize_like_torchvision`, then :func:`flip_resize` of the float image (already normalised: see
    :func:`is_normalized`). Returns (image, boxes in its pixels or None, factor)."""
    if resize not in RESIZES:
        raise UserError(f"config data.resize: unknown '{resize}', choose one of: {', '.join(RESIZES)}")
    if resize == "torchvision":
        image = normalize_like_torchvision(image, normalization)
    return flip_resize(image, boxes, scale, max_size, flip, resize, float_resize)


def is_normalized(resize: str) -> bool:
    """Whether :func:`transform_image` under this resize rule returns the normalised network input (the
    ``torchvision`` rule normalises before resizing) rather than 0..255 values."""
    return resize == "torchvision"


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
    return (image if is_normalized(resize) else normalize(image, normalization)), boxes, factor


@dataclass(frozen=True)
class PadRule:
    """The padded network-input size (H, W) of a batch, from the (h, w) of its images.

    ``bucket`` 0: the batch's largest height and width, each rounded up to a multiple of ``size_divisible`` (as
    many shapes as sizes occur). ``bucket`` B > 0 (a multiple of ``size_divisible``): each side is the smallest
    *bucket* that holds it, the buckets of a side being the multiples of B and that side's limit: the largest size
    it can have under the resize rule, rounded up to ``size_divisible`` (the shorter side: ``min(scale,
    max_size)``, the longer side: ``max_size``; which side is the shorter is read from the batch's largest sizes).
    So a batch of landscape images at scale 600 / max 1000 with B=128 is padded to 608 x 640, 768, 896 or 1024
    (a few wider images' heights 512, 384 ...): a handful of shapes per orientation instead of one per size. A
    side over its limit (an input the rule did not make) is rounded up to a multiple of B.

    Padding only adds zeros beyond each image; but the network sees more of them near its bottom/right border,
    so detections near that border may change slightly with the padded size (docs/PERFORMANCE.md, "Padded
    sizes")."""

    size_divisible: int = 32
    bucket: int = 0
    scale: int = 0  # the largest shorter side an input can have (training: max(train_scales))
    max_size: int = 0  # the largest longer side

    def __post_init__(self) -> None:
        d = max(1, int(self.size_divisible))
        object.__setattr__(self, "size_divisible", d)
        if self.bucket < 0 or self.bucket % d:
            raise UserError(f"pad bucket {self.bucket}: expected 0 or a multiple of size_divisible ({d})")

    def __call__(self, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        d, b = self.size_divisible, self.bucket
        height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
        if b == 0:
            return _round_up(height, d), _round_up(width, d)
        long_limit = _round_up(self.max_size, d)
        short_limit = _round_up(min(self.scale, self.max_size), d)
        h_limit, w_limit = (short_limit, long_limit) if height <= width else (long_limit, short_limit)
        return _bucket(height, b, h_limit), _bucket(width, b, w_limit)


def _round_up(n: int, d: int) -> int:
    return -(-int(n) // d) * d


def _bucket(n: int, step: int, limit: int) -> int:
    """The smallest of {multiples of step} and {limit} that is at least n (limit >= n), else n rounded up to step."""
    up = _round_up(n, step)
    return min(up, limit) if n <= limit else up


def batch_images(
    images: Sequence[torch.Tensor], normalization: str | None, size_divisible: int = 32, empty=torch.empty,
    pad: PadRule | None = None,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Resized RGB images (3, h_i, w_i), uint8 or float 0..255 -> (the float32 network input (N, 3, H, W):
    each image normalised (:func:`normalize`) straight into its corner of the batch, zero-padded at the
    bottom/right to the largest height and width rounded up to a multiple of ``size_divisible``; the (h_i, w_i)
    of each). ``normalization=None``: the images are only copied (into float32, or uint8 when all are uint8):
    already the network input (:func:`is_normalized`), or 0..255 pixels for :func:`normalize_batch`.
    ``empty(shape, dtype=)`` allocates the uninitialised batch (the loader's workers use shared memory).
    ``pad``: the padded size's rule (default: ``PadRule(size_divisible)``, the largest sides rounded up)."""
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    height, width = (pad or PadRule(size_divisible))(sizes)
    dtype = torch.float32
    if normalization is None and all(im.dtype == torch.uint8 for im in images):
        dtype = torch.uint8  # pixels to normalise later (normalize_batch): a quarter of the bytes to copy
    out = empty((len(images), 3, height, width), dtype=dtype)
    for i, (im, (h, w)) in enumerate(zip(images, sizes)):
        if normalization is None:
            out[i, :, :h, :w].copy_(im)
        else:
            normalize(im, normalization, out=out[i, :, :h, :w])
        out[i, :, h:, :].zero_()
        out[i, :, :h, w:].zero_()
    return out, sizes


class GraphInputTransform(nn.Module):
    """The test-time input transform as graph operations, for export: one uint8 RGB image (3, H, W) of any
    size -> (network input (1, 3, H', W') float32 zero-padded to a multiple of ``size_divisible``, its size
    (1, 2) float (h, w) before padding, the original size (1, 2) float (H, W)).

    The same steps as the eager test-time path (:func:`transform_image` with ``float_resize=True``, then
    :func:`batch_images`): ``fast``: :func:`target_size` on the input's shape as a tensor, bilinear resize in
    float32 without antialias, the :func:`normalize` constants; ``torchvision``: :func:`normalize_like_torchvision`,
    then the resize to ``floor(side * s)`` computed in float64 as the eager path's Python floats are; zero padding.
    """

    def __init__(self, scale: int, max_size: int, normalization: str, size_divisible: int = 32, resize: str = "fast"):
        super().__init__()
        if resize not in RESIZES:
            raise UserError(f"config data.resize: unknown '{resize}', choose one of: {', '.join(RESIZES)}")
        mul, off = _normalization_constants(normalization)
        self.register_buffer("mul", mul, persistent=False)
        self.register_buffer("off", off, persistent=False)
        self.normalization, self.resize = normalization, resize
        self.bgr = normalization == "caffe"
        self.scale, self.max_size, self.size_divisible = scale, max_size, size_divisible

    def _size(self, original: Tensor) -> Tensor:
        """(2,) int64 (H, W) -> (2,) int64 (h, w) of the resized image."""
        if self.resize == "torchvision":
            hw = original.double()
            factor = torch.minimum(self.scale / hw.min(), self.max_size / hw.max())  # resize_factor's rule
            return torch.floor(hw * factor).long().clamp(min=1)  # resized_size's rule
        return torch.stack(target_size(original[0], original[1], self.scale, self.max_size))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        original = torch.tensor(image.shape[-2:], device=image.device)  # (2,) int64 (H, W)
        size = self._size(original)  # (2,) (h, w)
        # the resized size as plain (data-dependent) integers: the graph's later shapes stay simple expressions
        # of two symbols instead of the size rule's arithmetic (which made export several times slower)
        h, w = size.tolist()
        for v in (h, w):
            torch._check(v >= 1)
            torch._check(v <= max(self.scale, self.max_size))
        if self.resize == "torchvision":  # normalised first, then resized (torchvision's order)
            x = normalize_like_torchvision(image, self.normalization)[None]
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
        else:
            x = F.interpolate(image[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=False)
            if self.bgr:
                x = x.flip(1)
            x = x * self.mul - self.off  # (1, 3, h, w)
        d = self.size_divisible
        x = F.pad(x, (0, (w + d - 1) // d * d - w, 0, (h + d - 1) // d * d - h))  # zeros at the bottom/right
        return x, size.float()[None], original.float()[None]


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
