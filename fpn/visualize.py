"""Drawing detections on images and writing them as JSON (``fpn demo`` and ``fpn test --vis``).

Boxes here are continuous xyxy in original-image pixels (the model's output with ``original_sizes``).
"""

from __future__ import annotations

import colorsys
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
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        text = f"{classes[label - 1]} {score:.2f}"
        tx1, ty1, tx2, ty2 = draw.textbbox((0, 0), text, font=font)
        tw, th = tx2 - tx1 + 4, ty2 - ty1 + 4
        ty = y1 - th if y1 - th >= 0 else y1  # above the box, or inside it at the top border
        tx = max(0.0, min(x1, img.width - tw))  # shifted left where it would run past the right edge
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=colour)
        draw.text((tx + 2 - tx1, ty + 2 - ty1), text, fill=(0, 0, 0), font=font)
    return img


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
