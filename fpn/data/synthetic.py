"""A synthetic detection dataset in the PASCAL VOC devkit layout and/or as COCO JSON, small enough to train
on a CPU.

Eight shape classes (``SYNTH_CLASSES``) are drawn on cluttered backgrounds. Each class has a colour family
(``CLASS_HUES``, jittered); texture is random per instance and the clutter uses every colour, so colour hints
at the class but only the shape tells an object from clutter.
Every image is drawn from its own ``numpy.random.Generator([seed, index])``; the same seed gives the same
files byte for byte (on the same numpy / Pillow versions).

Per image: width/height aspect log-uniform in [1/2, 2], longer side 240..400 px, shorter side >= 160 px;
a background of a colour gradient, low-frequency colour blotches, distractor strokes and irregular blobs,
and pixel noise; 1..6 objects (none in ``P_EMPTY`` of the images). Per object: a size (square root of its
unrotated box area) log-uniform from ``MIN_SIZE`` px to 0.9 of the shorter image side, an aspect ratio in
[1/2, 2] (most near 1), a class-dependent rotation, and a texture (solid, gradient, stripes, checker or
speckle). Objects are drawn in annotation order, later ones over earlier ones; 0..2 thin strokes are
drawn over everything.

Annotations are exact, taken from the rendered pixels: the box is the extent of the object's *visible*
pixels (the VOC rule), clipped to the image. ``truncated=1`` when part of the shape lies outside the
image; ``difficult=1`` when the visible box is tiny (``sqrt(w*h) < DIFFICULT_SIZE`` or a side below
``DIFFICULT_SIDE`` px) or under ``DIFFICULT_VISIBLE`` of the shape is visible. A placement that would leave
an earlier object less than ``MIN_VISIBLE`` visible is retried (up to ``PLACEMENT_TRIES`` times, then
the object is skipped), so annotated objects are never mostly hidden.

Layout written under ``out_dir``: ``JPEGImages/<id>.jpg``; format "voc": ``Annotations/<id>.xml``,
``ImageSets/Main/{trainval,test}.txt``, ``classes.txt``; format "coco": ``annotations/instances_trainval.json``
and ``annotations/instances_test.json`` (the same boxes; difficult objects as crowd regions, ignored as
VOC ignores them; image id = the number in the file name; category ids 1..8); plus two markers:
``.fpn_synthetic`` (written first: the folder belongs to this generator and may be overwritten) and
``DONE`` (written last, JSON with the parameters, formats and counts). A folder without ``DONE`` is an
interrupted run.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from itertools import repeat
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fpn.config import DataConfig
from fpn.data.coco import records_to_coco, write_coco_json
from fpn.data.voc import write_voc_xml
from fpn.errors import UserError
from fpn.io import atomic_write_bytes, atomic_write_text

SYNTH_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "crescent")
CLASS_HUES = {name: i / len(SYNTH_CLASSES) for i, name in enumerate(SYNTH_CLASSES)}  # evenly spaced on the wheel
HUE_JITTER = 0.03  # std of an object's hue around its class hue (neighbouring classes are 0.125 apart)

DEFAULT_SEED = DataConfig.synth_seed  # the config is the one source of the defaults
DEFAULT_TRAIN = DataConfig.synth_train
DEFAULT_TEST = DataConfig.synth_test

GENERATOR_VERSION = 2  # bump when the drawing changes: `fpn synth` then regenerates an existing dataset
OWNER_MARKER = ".fpn_synthetic"
DONE_MARKER = "DONE"
MAX_IMAGES = 999_999  # ids are six digits
FORMATS = ("voc", "coco")

# image geometry
IMAGE_LONG_SIDE = (240, 400)
IMAGE_MIN_SIDE = 160
IMAGE_MAX_ASPECT = 2.0
# objects
MAX_OBJECTS = 6
P_EMPTY = 0.04  # images without any object
MIN_SIZE = 12.0  # px, sqrt of the unrotated box area
MAX_SIZE_FRAC = 0.9  # of the shorter image side (and the rotated box fits in 0.9 of each side)
OBJECT_MAX_ASPECT = 2.0
P_TRUNCATE = 0.15  # objects deliberately placed across the border
INSIDE_RANGE = (0.45, 0.9)  # fraction of a deliberately truncated object's extent left inside the image
MIN_INSIDE = 0.35  # placements with less of the shape's area inside the image are retried
MIN_VISIBLE = 0.25  # placements leaving an earlier object less visible than this are retried
PLACEMENT_TRIES = 12
MIN_CONTRAST = 100.0  # RGB distance between an object's colours and the background under it
# difficulty
DIFFICULT_SIZE = 14.0
DIFFICULT_SIDE = 8
DIFFICULT_VISIBLE = 0.4
JPEG_QUALITY = 90
PARALLEL_MIN_IMAGES = 200  # fewer images are drawn in this process (starting workers costs ~1 s)

# largest rotation per class, degrees (symmetric shapes turn freely)
_ROTATION = {"circle": 180, "square": 20, "triangle": 25, "star": 180, "cross": 20, "ring": 180,
             "hexagon": 180, "crescent": 180}  # fmt: skip


# --- shapes: polygons in unit coordinates, normalised to the box [-1, 1]^2 ---------------------------------


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2, dx: float = 0.0) -> np.ndarray:
    a = phase + np.arange(n) * (2 * math.pi / n)
    return np.stack([dx + radius * np.cos(a), radius * np.sin(a)], axis=1)


def _normalise(parts: list[tuple[np.ndarray, int]]) -> list[tuple[np.ndarray, int]]:
    """Scale and centre so the filled outline spans exactly [-1, 1] on both axes."""
    outline = parts[0][0]
    lo, hi = outline.min(0), outline.max(0)
    c, h = (lo + hi) / 2, (hi - lo) / 2
    return [((p - c) / h, fill) for p, fill in parts]


def _shape(name: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Polygons (vertices, fill) drawn in order into a mask: fill 1 adds the area, 0 cuts a hole."""
    if name == "circle":
        return [(_regular(48), 1)]
    if name == "square":
        return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), 1)]
    if name == "triangle":
        return _normalise([(_regular(3), 1)])
    if name == "star":
        outer, inner = _regular(5), _regular(5, rng.uniform(0.38, 0.5), phase=-math.pi / 2 + math.pi / 5)
        return _normalise([(np.stack([outer, inner], 1).reshape(-1, 2), 1)])
    if name == "cross":
        t = rng.uniform(0.25, 0.38)  # half-width of an arm
        arm = np.array([(-t, -1), (t, -1), (t, -t)])  # one arm's outline; the others are its rotations
        rot90 = np.array([[0, 1], [-1, 0]])
        return [(np.concatenate([arm @ np.linalg.matrix_power(rot90, k) for k in range(4)]), 1)]
    if name == "ring":
        return [(_regular(48), 1), (_regular(48, rng.uniform(0.45, 0.65)), 0)]
    if name == "hexagon":
        return _normalise([(_regular(6, phase=0.0), 1)])
    if name == "crescent":
        # the outline is the outer circle (its box); the bite is a second, offset circle
        return [(_regular(48), 1), (_regular(48, rng.uniform(0.8, 0.95), dx=rng.uniform(0.35, 0.6)), 0)]
    raise ValueError(f"unknown shape {name}")


# --- drawing ----------------------------------------------------------------------------------------------


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    aspect = math.exp(rng.uniform(-1, 1) * math.log(IMAGE_MAX_ASPECT))  # width / height
    long_side = int(rng.integers(IMAGE_LONG_SIDE[0], IMAGE_LONG_SIDE[1] + 1))
    short_side = max(IMAGE_MIN_SIDE, round(long_side / max(aspect, 1 / aspect)))
    return (long_side, short_side) if aspect >= 1 else (short_side, long_side)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Float32 (h, w, 3): a two-colour linear gradient plus smooth low-frequency colour blotches."""
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    a = rng.uniform(0, 2 * math.pi)
    t = np.arange(w, dtype=np.float32) * math.cos(a) + np.arange(h, dtype=np.float32)[:, None] * math.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c1.astype(np.float32) + t[..., None] * (c2 - c1).astype(np.float32)
    grid = rng.uniform(-50, 50, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3)).astype(np.float32)
    up = [np.asarray(Image.fromarray(g).resize((w, h), Image.BILINEAR)) for g in grid.transpose(2, 0, 1)]
    return img + np.stack(up, -1)


def _blob(rng: np.random.Generator, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """An irregular closed outline (random low harmonics of the radius): clutter, not a class."""
    n = int(rng.integers(12, 24))
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    radius = np.ones(n)
    for k in (2, 3, 4):
        radius += rng.uniform(0.1, 0.3) * np.cos(k * a + rng.uniform(0, 2 * math.pi))
    radius = r * np.clip(radius, 0.3, None)
    return list(zip((cx + radius * np.cos(a)).tolist(), (cy + radius * np.sin(a)).tolist()))


def _clutter(rng: np.random.Generator, img: Image.Image) -> None:
    """Distractor strokes, dots and blobs drawn onto the background."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    colour = lambda: tuple(int(v) for v in rng.integers(0, 256, 3))  # noqa: E731
    for _ in range(int(rng.integers(2, 11))):
        pts = rng.uniform((0, 0), (w, h), (int(rng.integers(2, 6)), 2))
        draw.line([tuple(p) for p in pts.tolist()], fill=colour(), width=int(rng.integers(1, 5)))
    for _ in range(int(rng.integers(0, 8))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1, 3)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour())
    for _ in range(int(rng.integers(0, 5))):
        draw.polygon(_blob(rng, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, 30)), fill=colour())


def _front_strokes(rng: np.random.Generator, canvas: np.ndarray, owner: np.ndarray) -> None:
    """A few thin strokes drawn over everything, so being crossed by clutter does not mean background;
    the pixels they cover are no longer any object's (``owner`` -1), keeping the boxes exact."""
    h, w = owner.shape
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    n = int(rng.integers(0, 3))
    colours = rng.uniform(0, 255, (n, 3)).astype(np.float32)
    for k in range(n):
        pts = rng.uniform((0, 0), (w, h), (int(rng.integers(2, 4)), 2))
        draw.line([tuple(p) for p in pts.tolist()], fill=k + 1, width=int(rng.integers(1, 3)))
    ids = np.asarray(layer)
    hit = ids > 0
    canvas[hit] = colours[ids[hit] - 1]
    owner[hit] = -1


def _class_colours(rng: np.random.Generator, name: str, n: int) -> np.ndarray:
    """``n`` RGB candidates in the class's colour family: its hue (jittered), any saturation and value
    from medium to full. Clutter uses every colour, so colour hints at the class but shape decides."""
    hue = (CLASS_HUES[name] + rng.normal(0, HUE_JITTER, n)) % 1.0
    sat, val = rng.uniform(0.5, 1.0, n), rng.uniform(0.45, 1.0, n)
    k = (np.array([5.0, 3.0, 1.0]) + hue[:, None] * 6) % 6  # HSV -> RGB, vectorised
    rgb = val[:, None] - val[:, None] * sat[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)
    return rgb * 255


def _colour_against(rng: np.random.Generator, bg: np.ndarray, name: str) -> np.ndarray:
    """A colour of the class's family at least MIN_CONTRAST from ``bg`` (the best of a few tries)."""
    cand = _class_colours(rng, name, 16)
    dist = np.linalg.norm(cand - bg, axis=1)
    ok = np.flatnonzero(dist >= MIN_CONTRAST)
    return cand[ok[0]] if ok.size else cand[int(dist.argmax())]


def _texture(rng: np.random.Generator, h: int, w: int, bg: np.ndarray, name: str) -> np.ndarray:
    """Float32 (h, w, 3) fill for one object: solid, gradient, stripes, checker or speckle."""
    c1, c2 = _colour_against(rng, bg, name), _colour_against(rng, bg, name)
    kind = rng.integers(0, 5)
    if kind == 0:
        return np.broadcast_to(c1.astype(np.float32), (h, w, 3))
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)
    a = rng.uniform(0, 2 * math.pi)
    proj = xx * math.cos(a) + yy * math.sin(a)
    if kind == 1:  # gradient
        t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1.0)
    elif kind == 2:  # stripes
        t = (np.floor(proj / rng.uniform(2, 7)) % 2).astype(np.float32)
    elif kind == 3:  # checker
        p = rng.uniform(2, 7)
        t = ((np.floor(xx / p) + np.floor(yy / p)) % 2).astype(np.float32)
    else:  # speckle: one colour with strong per-pixel variation
        return c1.astype(np.float32) + 30 * rng.standard_normal((h, w, 3), dtype=np.float32)
    return (c1 + t[..., None] * (c2 - c1)).astype(np.float32)


def _rasterise(parts, sx: float, sy: float, angle: float, cx: float, cy: float):
    """Mask of the transformed shape: (bool mask, x0, y0) with the mask's top-left pixel at (x0, y0)."""
    ca, sa = math.cos(angle), math.sin(angle)
    rot = np.array([[ca, sa], [-sa, ca]]) * np.array([[sx], [sy]])  # scale, then rotate (row vectors)
    polys = [(p @ rot + (cx, cy), fill) for p, fill in parts]
    lo, hi = polys[0][0].min(0), polys[0][0].max(0)
    x0, y0 = int(math.floor(lo[0])) - 1, int(math.floor(lo[1])) - 1
    mw, mh = int(math.ceil(hi[0])) - x0 + 2, int(math.ceil(hi[1])) - y0 + 2
    mask = Image.new("L", (mw, mh), 0)
    draw = ImageDraw.Draw(mask)
    for p, fill in polys:
        draw.polygon([tuple(v) for v in (p - (x0, y0)).tolist()], fill=fill)
    return np.asarray(mask, dtype=bool), x0, y0


def _extent(parts, sx: float, sy: float, angle: float) -> tuple[float, float]:
    """Width and height of the transformed shape's box."""
    ca, sa = math.cos(angle), math.sin(angle)
    p = parts[0][0] @ (np.array([[ca, sa], [-sa, ca]]) * np.array([[sx], [sy]]))
    return tuple((p.max(0) - p.min(0)).tolist())


def _centre(rng: np.random.Generator, w: int, h: int, ew: float, eh: float) -> tuple[float, float]:
    """Centre for an object of box size (ew, eh): inside the image, or across one border."""
    cx, cy = rng.uniform(ew / 2, w - ew / 2), rng.uniform(eh / 2, h - eh / 2)
    if rng.random() < P_TRUNCATE:
        inside = rng.uniform(*INSIDE_RANGE)  # of the extent along the cut axis
        side = rng.integers(0, 4)
        if side == 0:
            cx = inside * ew - ew / 2
        elif side == 1:
            cx = w - inside * ew + ew / 2
        elif side == 2:
            cy = inside * eh - eh / 2
        else:
            cy = h - inside * eh + eh / 2
    return cx, cy


class _Scene:
    """Which object is on top at each pixel, and per object its pixel counts: the source of exact boxes."""

    def __init__(self, w: int, h: int):
        self.owner = np.full((h, w), -1, np.int16)  # index of the topmost object, -1 for none
        self.names: list[str] = []
        self.full: list[int] = []  # pixels of the whole shape, inside the image or not
        self.inside: list[int] = []  # ... of them inside the image
        self.visible: list[int] = []  # ... of them not covered by later objects
        self.regions: list[tuple[int, int, int, int]] = []  # (x0, y0, x1, y1) of the in-image mask

    def place(self, name: str, mask: np.ndarray, x0: int, y0: int):
        """Put the shape ``mask`` (top-left pixel at x0, y0) on top and return ((x0, y0, x1, y1), mask) of
        its in-image part; None (nothing changed) if too little of it lies inside the image or it would
        hide too much of an earlier object."""
        h, w = self.owner.shape
        ix0, iy0 = max(x0, 0), max(y0, 0)
        ix1, iy1 = min(x0 + mask.shape[1], w), min(y0 + mask.shape[0], h)
        n_full = int(mask.sum())
        if n_full == 0 or ix1 <= ix0 or iy1 <= iy0:
            return None
        m = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        n_in = int(m.sum())
        if n_in < MIN_INSIDE * n_full:
            return None
        region = self.owner[iy0:iy1, ix0:ix1]
        under = region[m]
        after = np.asarray(self.visible, np.int64) - np.bincount(under[under >= 0], minlength=len(self.full))
        if np.any(after < MIN_VISIBLE * np.asarray(self.full)):
            return None
        region[m] = len(self.full)
        self.visible = after.tolist() + [n_in]
        self.names.append(name)
        self.full.append(n_full)
        self.inside.append(n_in)
        self.regions.append((ix0, iy0, ix1, iy1))
        return self.regions[-1], m

    def objects(self) -> list[dict]:
        """VOC objects (write_voc_xml format) from the final ownership map, in drawing order."""
        visible = np.bincount(self.owner[self.owner >= 0], minlength=len(self.full))
        out = []
        for k, (name, (ix0, iy0, ix1, iy1)) in enumerate(zip(self.names, self.regions)):
            if visible[k] == 0:  # wholly hidden (only a sliver under a front stroke can be): not annotated
                continue
            ys, xs = np.nonzero(self.owner[iy0:iy1, ix0:ix1] == k)
            x1, x2 = ix0 + int(xs.min()) + 1, ix0 + int(xs.max()) + 1  # VOC: 1-based inclusive
            y1, y2 = iy0 + int(ys.min()) + 1, iy0 + int(ys.max()) + 1
            bw, bh = x2 - x1 + 1, y2 - y1 + 1
            tiny = math.sqrt(bw * bh) < DIFFICULT_SIZE or min(bw, bh) < DIFFICULT_SIDE
            hidden = visible[k] < DIFFICULT_VISIBLE * self.full[k]
            truncated = self.inside[k] < self.full[k]
            out.append({"name": name, "bbox": (x1, y1, x2, y2), "pose": "Unspecified",
                        "truncated": truncated, "difficult": bool(tiny or hidden)})  # fmt: skip
        return out


def _add_object(rng: np.random.Generator, scene: _Scene, canvas: np.ndarray, bg: np.ndarray) -> None:
    """Sample one object and draw it where it fits (up to PLACEMENT_TRIES positions), else skip it."""
    h, w = scene.owner.shape
    name = SYNTH_CLASSES[int(rng.integers(len(SYNTH_CLASSES)))]
    parts = _shape(name, rng)
    aspect = math.exp((rng.random() + rng.random() - 1) * math.log(OBJECT_MAX_ASPECT))  # mostly near 1
    angle = math.radians(rng.uniform(-1, 1) * _ROTATION[name])
    size = math.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE_FRAC * min(w, h))))
    ew, eh = _extent(parts, math.sqrt(aspect) / 2, 1 / math.sqrt(aspect) / 2, angle)  # box per unit size
    size = max(MIN_SIZE, min(size, MAX_SIZE_FRAC * w / ew, MAX_SIZE_FRAC * h / eh))
    sx, sy = size * math.sqrt(aspect) / 2, size / math.sqrt(aspect) / 2
    for _ in range(PLACEMENT_TRIES):
        cx, cy = _centre(rng, w, h, ew * size, eh * size)
        placed = scene.place(name, *_rasterise(parts, sx, sy, angle, cx, cy))
        if placed is not None:
            (x0, y0, x1, y1), m = placed
            tex = _texture(rng, y1 - y0, x1 - x0, bg[int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))], name)
            canvas[y0:y1, x0:x1][m] = tex[m]
            return


def render_image(seed: int, index: int) -> tuple[bytes, int, int, list[dict]]:
    """Draw image ``index`` of the dataset ``seed``: (JPEG bytes, width, height, VOC objects)."""
    rng = np.random.default_rng([seed, index])
    w, h = _image_size(rng)
    bg = _background(rng, w, h)
    canvas_img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    _clutter(rng, canvas_img)
    canvas = np.asarray(canvas_img, dtype=np.float32).copy()
    scene = _Scene(w, h)
    n_objects = 0 if rng.random() < P_EMPTY else int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(n_objects):
        _add_object(rng, scene, canvas, bg)
    _front_strokes(rng, canvas, scene.owner)
    canvas += rng.uniform(2, 10) * rng.standard_normal(canvas.shape, dtype=np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), w, h, scene.objects()


# --- the dataset ------------------------------------------------------------------------------------------


def _ids(n_train: int, n_test: int) -> tuple[list[str], list[str]]:
    ids = [f"{i:06d}" for i in range(1, n_train + n_test + 1)]
    return ids[:n_train], ids[n_train:]


def read_marker(out_dir: str | Path) -> dict | None:
    """The ``DONE`` marker's JSON (parameters and counts), or None when the dataset is not complete."""
    try:
        info = json.loads((Path(out_dir) / DONE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_complete(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds a fully written synthetic dataset (its ``DONE`` marker exists)."""
    return read_marker(out_dir) is not None


def formats(out_dir: str | Path) -> tuple[str, ...]:
    """The formats of the complete dataset in ``out_dir`` (() when there is none; a marker from before
    formats existed means VOC)."""
    info = read_marker(out_dir)
    return () if info is None else tuple(info.get("formats", ("voc",)))


def parameters(seed: int, n_train: int, n_test: int, formats: tuple[str, ...] = ("voc",)) -> dict:
    """What identifies a generated dataset; equal parameters mean identical files."""
    return {"generator": "fpn.data.synthetic", "version": GENERATOR_VERSION, "seed": seed,
            "n_train": n_train, "n_test": n_test, "formats": list(formats)}  # fmt: skip


def matches(out_dir: str | Path, seed: int, n_train: int, n_test: int, formats: tuple[str, ...] = ("voc",)) -> bool:
    """True when ``out_dir`` holds a complete dataset generated with exactly these parameters."""
    info = read_marker(out_dir)
    if info is None:
        return False
    info = {"formats": ["voc"], **info}  # written before formats existed: VOC
    formats = tuple(f for f in FORMATS if f in formats)  # as generate() writes them
    return all(info.get(k) == v for k, v in parameters(seed, n_train, n_test, formats).items())


def _check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    if not formats or any(f not in FORMATS for f in formats):
        raise UserError(f"synthetic dataset: formats must be some of {', '.join(FORMATS)}, got {formats!r}")
    return tuple(f for f in FORMATS if f in formats)  # canonical order


def _check_args(out_dir: Path, seed: int, n_train: int, n_test: int) -> None:
    for name, value in (("seed", seed), ("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise UserError(f"synthetic dataset: {name} must be an integer, got {value!r}")
    if seed < 0:
        raise UserError(f"synthetic dataset: seed must be >= 0, got {seed}")
    if n_train < 1 or n_test < 1:
        raise UserError(f"synthetic dataset: needs at least 1 trainval and 1 test image, got {n_train}, {n_test}")
    if n_train + n_test > MAX_IMAGES:
        raise UserError(f"synthetic dataset: at most {MAX_IMAGES} images, got {n_train + n_test}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / OWNER_MARKER).exists():
        raise UserError(
            f"{out_dir}: folder is not empty and does not hold a synthetic dataset; "
            "choose a new or empty folder (it would be overwritten)"
        )


def _write_image(out: Path, seed: int, index: int, image_id: str, voc: bool = True) -> tuple[int, int, list[dict]]:
    """Render image ``index`` and write its JPEG (and, with ``voc``, its XML); returns its size and VOC objects."""
    jpeg, w, h, objects = render_image(seed, index)
    atomic_write_bytes(out / "JPEGImages" / f"{image_id}.jpg", jpeg)
    if voc:
        write_voc_xml(out / "Annotations" / f"{image_id}.xml", f"{image_id}.jpg", w, h, objects, folder="synthetic")
    return w, h, objects


def _write_all(out: Path, seed: int, ids: list[str], workers: int, voc: bool):
    """(width, height, objects) of every image, in order; images are written by ``workers`` processes (0: one
    per CPU core). Every image has its own random generator, so the files do not depend on the number of
    processes."""
    from tqdm import tqdm

    workers = workers or os.cpu_count() or 1
    # a progress bar on a terminal (generating the default 6700 images takes ~25 s on 2 cores)
    bar = partial(tqdm, total=len(ids), desc="drawing images", unit="img", disable=None, leave=False)
    if workers == 1 or len(ids) < PARALLEL_MIN_IMAGES:
        return [_write_image(out, seed, index, image_id, voc) for index, image_id in bar(enumerate(ids))]
    # spawn, not fork: the caller may already run torch's thread pools, which do not survive a fork
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = pool.map(_write_image, repeat(out), repeat(seed), range(len(ids)), ids, repeat(voc), chunksize=32)
        return list(bar(jobs))


def _coco_split(out: Path, ids: list[str], images: list[tuple[int, int, list[dict]]]) -> dict:
    """One split's COCO dict from the VOC objects (1-based inclusive boxes -> continuous)."""
    label = {c: i + 1 for i, c in enumerate(SYNTH_CLASSES)}
    records = []
    for image_id, (w, h, objects) in zip(ids, images):
        boxes = [(x1 - 1, y1 - 1, x2, y2) for x1, y1, x2, y2 in (o["bbox"] for o in objects)]
        records.append({
            "image": str(out / "JPEGImages" / f"{image_id}.jpg"), "image_id": int(image_id), "width": w, "height": h,
            "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            "labels": np.asarray([label[o["name"]] for o in objects], dtype=np.int64),
            "difficult": np.asarray([o["difficult"] for o in objects], dtype=bool),
        })  # fmt: skip
    return records_to_coco(records, SYNTH_CLASSES, images_dir=out / "JPEGImages")


def generate(out_dir: str | Path, seed: int = DEFAULT_SEED, n_train: int = DEFAULT_TRAIN,
             n_test: int = DEFAULT_TEST, workers: int = 0, formats: tuple[str, ...] = ("voc",)) -> Path:  # fmt: skip
    """Write the dataset (images 1..n_train are ``trainval``, the next n_test are ``test``) in ``formats``
    (some of "voc", "coco") and return its folder. Always (re)writes; callers that want to reuse an existing
    dataset check ``matches`` first. ``workers`` processes draw the images (0: one per CPU core); the files
    are the same for any number.

    Raises UserError for bad counts, when ``out_dir`` is a file, or when it is a non-empty folder this
    generator did not create (so a real VOC folder is never overwritten). Files of an earlier synthetic
    dataset in the folder that the new one does not have are removed.
    """
    out = Path(out_dir)
    _check_args(out, seed, n_train, n_test)
    formats = _check_formats(tuple(formats))
    voc = "voc" in formats
    seed, n_train, n_test = int(seed), int(n_train), int(n_test)  # numpy integers are not JSON
    train_ids, test_ids = _ids(n_train, n_test)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / DONE_MARKER).unlink(missing_ok=True)  # from here on the folder is incomplete
        atomic_write_text(out / OWNER_MARKER, json.dumps(parameters(seed, n_train, n_test, formats)) + "\n")
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main") if voc else ("JPEGImages",):
            (out / sub).mkdir(parents=True, exist_ok=True)
        _remove_stale(out, set(train_ids + test_ids), formats)

        counts = {"images": 0, "objects": 0, "truncated": 0, "difficult": 0, "empty_images": 0}
        per_class = dict.fromkeys(SYNTH_CLASSES, 0)
        images = _write_all(out, seed, train_ids + test_ids, workers, voc)
        for _, _, objects in images:
            counts["images"] += 1
            counts["objects"] += len(objects)
            counts["truncated"] += sum(o["truncated"] for o in objects)
            counts["difficult"] += sum(o["difficult"] for o in objects)
            counts["empty_images"] += not objects
            for o in objects:
                per_class[o["name"]] += 1

        if voc:
            main = out / "ImageSets" / "Main"
            atomic_write_text(main / "trainval.txt", "".join(f"{i}\n" for i in train_ids))
            atomic_write_text(main / "test.txt", "".join(f"{i}\n" for i in test_ids))
            atomic_write_text(out / "classes.txt", "".join(f"{c}\n" for c in SYNTH_CLASSES))
        if "coco" in formats:
            splits = (("trainval", train_ids, images[:n_train]), ("test", test_ids, images[n_train:]))
            for split, ids, split_images in splits:
                write_coco_json(out / "annotations" / f"instances_{split}.json", _coco_split(out, ids, split_images))
        info = {**parameters(seed, n_train, n_test, formats), "classes": list(SYNTH_CLASSES), **counts}
        info["per_class"] = per_class
        atomic_write_text(out / DONE_MARKER, json.dumps(info, indent=1) + "\n")  # last: the dataset is complete
    except OSError as e:
        raise UserError(f"{e.filename or out}: cannot write the synthetic dataset ({e.strerror})") from None
    return out


def _remove_stale(out: Path, keep: set[str], formats: tuple[str, ...]) -> None:
    """Delete images/annotations of an earlier, larger synthetic dataset in this (owned) folder, and the files
    of a format no longer written (so the folder's layout is unambiguous)."""
    for sub, ext in (("JPEGImages", ".jpg"), ("Annotations", ".xml")):
        for f in (out / sub).glob(f"*{ext}"):
            if f.stem not in keep or (ext == ".xml" and "voc" not in formats):
                f.unlink()
    if "voc" not in formats:
        for f in ("ImageSets/Main/trainval.txt", "ImageSets/Main/test.txt", "classes.txt"):
            (out / f).unlink(missing_ok=True)
        for d in ("ImageSets/Main", "ImageSets", "Annotations"):  # left when empty, else VOC would be detected
            try:
                (out / d).rmdir()
            except OSError:
                pass
    if "coco" not in formats:
        for split in ("trainval", "test"):
            (out / "annotations" / f"instances_{split}.json").unlink(missing_ok=True)
