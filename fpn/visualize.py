"""Drawing detections on images and writing them as JSON (``fpn demo`` and ``fpn test --vis``), and a dataset's
pictures (``fpn inspect``): a contact sheet of images with their labelled boxes, a plot of box sizes per class.

Boxes here are continuous xyxy in original-image pixels (the model's output with ``original_sizes``, a record's).
"""

from __future__ import annotations

import colorsys
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated, saturated RGB colours (golden-ratio hue steps)."""
    colours = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def select(output: dict, thresh: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (D,4), scores (D,), labels (D,)) of one model output with score >= thresh, best first."""
    boxes = _numpy(output["boxes"]).astype(np.float64).reshape(-1, 4)
    scores = _numpy(output["scores"]).astype(np.float64).reshape(-1)
    labels = _numpy(output["labels"]).astype(np.int64).reshape(-1)
    keep = np.flatnonzero(scores >= thresh)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return boxes[keep], scores[keep], labels[keep]


def draw_detections(
    image: Image.Image, output: dict, classes: Sequence[str], thresh: float = 0.5, width: int | None = None
) -> Image.Image:
    """A copy of ``image`` (RGB) with each detection of score >= thresh drawn as a box and a
    ``class score`` label; colours are per class."""
    img = image.convert("RGB")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    colours = palette(len(classes))
    line = width or max(2, round(max(img.size) / 300))
    boxes, scores, labels = select(output, thresh)
    for box, score, label in zip(boxes[::-1], scores[::-1], labels[::-1]):  # best drawn last, on top
        colour = colours[(label - 1) % len(colours)]
        _labelled_box(draw, font, box, f"{classes[label - 1]} {score:.2f}", colour, line, img.width)
    return img


def _labelled_box(draw: ImageDraw.ImageDraw, font, box, text: str, colour, line: int, image_width: int) -> None:
    """A box outline and its label on a filled background, above the box (inside it at the top border), kept
    whole at the image's right edge."""
    x1, y1, x2, y2 = (float(v) for v in box)
    draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colour, width=line)
    tx1, ty1, tx2, ty2 = draw.textbbox((0, 0), text, font=font)
    tw, th = tx2 - tx1 + 4, ty2 - ty1 + 4
    ty = y1 - th if y1 - th >= 0 else y1  # above the box, or inside it at the top border
    tx = max(0.0, min(x1, image_width - tw))  # shifted left where it would run past the right edge
    draw.rectangle([tx, ty, tx + tw, ty + th], fill=colour)
    draw.text((tx + 2 - tx1, ty + 2 - ty1), text, fill=(0, 0, 0), font=font)


def detections_record(image_id: str, image: str, output: dict, classes: Sequence[str], thresh: float = 0.0) -> dict:
    """JSON-ready ``{"id", "image", "detections": [{"class", "label", "score", "box": [x1, y1, x2, y2]}]}``."""
    boxes, scores, labels = select(output, thresh)
    return {
        "id": image_id,
        "image": image,
        "detections": [
            {
                "class": classes[label - 1],
                "label": int(label),
                "score": round(float(score), 5),
                "box": [round(float(v), 2) for v in box],
            }
            for box, score, label in zip(boxes, scores, labels)
        ],
    }


# --- a dataset's pictures (fpn inspect) ---------------------------------------------------------------------

IGNORED_COLOUR = (150, 150, 150)  # difficult objects (when not trained) and crowd regions


def draw_boxes(image: Image.Image, record: dict, classes: Sequence[str], use_difficult: bool = False,
               factor: float = 1.0, width: int = 2) -> Image.Image:  # fmt: skip
    """A copy of ``image`` with a record's boxes (scaled by ``factor``: ``image`` may be a thumbnail) and class
    names; difficult (unless trained) and crowd boxes in grey, named so."""
    img = image.convert("RGB")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    colours = palette(len(classes))
    boxes = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4) * factor
    labels = np.asarray(record["labels"], dtype=np.int64).reshape(-1)
    crowd = np.asarray(record.get("crowd", np.zeros(len(labels), bool)), dtype=bool).reshape(-1)
    difficult = np.asarray(record["difficult"], dtype=bool).reshape(-1) & ~crowd
    ignored = crowd | (difficult & (not use_difficult))
    for k in np.argsort(~ignored, kind="stable"):  # objects drawn over ignored regions
        name = classes[labels[k] - 1]
        text = f"{name} (crowd)" if crowd[k] else f"{name} (difficult)" if difficult[k] else name
        colour = IGNORED_COLOUR if ignored[k] else colours[(labels[k] - 1) % len(colours)]
        _labelled_box(draw, font, boxes[k], text, colour, 1 if ignored[k] else width, img.width)
    return img


def contact_sheet(records: Sequence[dict], classes: Sequence[str], n: int = 16, tile: int = 256,
                  use_difficult: bool = False) -> Image.Image:  # fmt: skip
    """``n`` images spread evenly over ``records`` (first and last included), each fitted into a ``tile`` square with
    its boxes (:func:`draw_boxes`) and a caption (id, size, objects), on a grid about as wide as high. An image that
    cannot be read is a grey tile saying so."""
    picks = np.unique(np.linspace(0, len(records) - 1, num=min(n, len(records))).round().astype(int))
    cols = math.ceil(math.sqrt(len(picks)))
    rows = math.ceil(len(picks) / cols)
    font = ImageFont.load_default()
    caption = 14
    sheet = Image.new("RGB", (cols * (tile + 4) + 4, rows * (tile + caption + 6) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, k in enumerate(picks.tolist()):
        rec = records[k]
        x, y = 4 + (i % cols) * (tile + 4), 4 + (i // cols) * (tile + caption + 6)
        try:
            with Image.open(rec["image"]) as im:
                im = im.convert("RGB")
                factor = min(tile / im.width, tile / im.height)
                thumb = im.resize((max(1, round(im.width * factor)), max(1, round(im.height * factor))),
                                  Image.Resampling.BILINEAR)  # fmt: skip
            # boxes in the annotation's pixels: the record's size, which may differ from the file's
            thumb = draw_boxes(thumb, rec, classes, use_difficult, factor=thumb.width / rec["width"])
            sheet.paste(thumb, (x, y))
            text = f"{rec['id']}  {rec['width']}x{rec['height']}  {len(rec['labels'])} obj"
        except (OSError, ValueError):
            draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=(200, 200, 200))
            text = f"{rec['id']}: not a readable image"
        draw.text((x, y + tile + 2), text[: tile // 6], fill=(0, 0, 0), font=font)
    return sheet


def plot_box_sizes(labels: np.ndarray, sizes: np.ndarray, classes: Sequence[str], anchor_sizes: Sequence[int],
                   reach: tuple[float, float], title: str) -> bytes:  # fmt: skip
    """A PNG (bytes): per class, the distribution of box sizes at the network's input (box: quartiles, whiskers:
    5th-95th percentile, dots beyond when there are at most 20000 boxes), the anchor sizes of P2..P6 as dashed lines, and shaded the sizes no anchor
    reaches with the RPN's foreground IoU."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    per_class = [sizes[labels == c + 1] for c in range(len(classes))]
    fig = Figure(figsize=(9, 1.6 + 0.32 * len(classes)), dpi=100)
    ax = fig.add_subplot()
    shown = [s if len(s) else np.array([np.nan]) for s in per_class]
    orient = {"orientation": "horizontal"} if _boxplot_has_orientation() else {"vert": False}
    few = len(sizes) <= 20000  # the dots beyond the whiskers take seconds to draw for COCO's 860k boxes
    ax.boxplot(shown, whis=(5, 95), showfliers=few, flierprops={"markersize": 2, "alpha": 0.3}, widths=0.6, **orient)
    ax.set_yticks(range(1, len(classes) + 1), [f"{c} ({len(s)})" for c, s in zip(classes, per_class)])
    ax.invert_yaxis()  # first class on top, as the text summary lists them
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 16, not 2^4
    finite = sizes[np.isfinite(sizes) & (sizes > 0)]
    lo = min(float(finite.min()), anchor_sizes[0]) if len(finite) else anchor_sizes[0]
    hi = max(float(finite.max()), anchor_sizes[-1]) if len(finite) else anchor_sizes[-1]
    ax.set_xlim(lo / 1.5, hi * 1.5)
    ax.axvspan(lo / 1.5, reach[0], color="tab:red", alpha=0.08, lw=0)
    ax.axvspan(reach[1], hi * 1.5, color="tab:red", alpha=0.08, lw=0)
    for level, a in enumerate(anchor_sizes, 2):
        ax.axvline(a, color="tab:blue", ls="--", lw=1)
        ax.text(a, 1.0, f"P{level} {a}", transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8,
                color="tab:blue")  # fmt: skip
    ax.set_xlabel("box size sqrt(w * h) at the network's input (px, log scale); dashed: anchor sizes; shaded: no "
                  "anchor reaches the RPN's IoU", fontsize=9)  # fmt: skip
    ax.set_title(title, pad=16, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _boxplot_has_orientation() -> bool:
    """matplotlib 3.10 replaced boxplot's ``vert`` with ``orientation`` (``vert`` warns from then on)."""
    import matplotlib

    return tuple(int(p) for p in matplotlib.__version__.split(".")[:2]) >= (3, 10)
