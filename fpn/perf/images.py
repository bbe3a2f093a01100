"""Images for ``fpn bench``: real pictures with their boxes, so that the timed models see what they see in use.

A *sample* is ``{"image": uint8 (3, H, W) RGB, "boxes": float32 (K, 4) continuous xyxy, "labels": int64 (K,)
in 1..C}``, or with ``"boxes": None`` for a picture that came without annotations.

- :func:`synthetic_samples`: images of the synthetic dataset (``fpn.data.synthetic``), drawn in memory, with
  their boxes; the default.
- :func:`folder_samples`: ``--image-dir``: a VOC or COCO dataset folder (records with boxes, through
  ``fpn.data.catalog``) or any folder of .jpg/.jpeg/.png pictures (no boxes).
- :func:`resize_samples`: every sample to one size (``--image-size``), boxes scaled along.
- :func:`wrap_labels`: a sample's labels fitted to a model with fewer classes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from fpn.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def synthetic_samples(n: int, seed: int = 0) -> list[dict]:
    """The first ``n`` images of the synthetic dataset ``seed`` (boxes of all objects, difficult included)."""
    from PIL import Image

    from fpn.data.synthetic import SYNTH_CLASSES, render_image

    label_of = {name: i + 1 for i, name in enumerate(SYNTH_CLASSES)}
    samples = []
    for index in range(n):
        jpeg, _, _, objects = render_image(seed, index)
        with Image.open(io.BytesIO(jpeg)) as im:
            rgb = np.array(im.convert("RGB"))
        # VOC objects are 1-based inclusive pixel boxes; continuous xyxy is (x1 - 1, y1 - 1, x2, y2)
        boxes = [(x1 - 1, y1 - 1, x2, y2) for x1, y1, x2, y2 in (o["bbox"] for o in objects)]
        samples.append({"image": torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
                        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor([label_of[o["name"]] for o in objects], dtype=torch.int64)})  # fmt: skip
    return samples


def folder_samples(image_dir: str | Path, n: int) -> tuple[list[dict], str]:
    """The first ``n`` images of ``image_dir`` and what they are: a VOC/COCO dataset folder gives its training
    records (boxes included; its test split when it has no training split), any other folder its pictures in
    name order, without boxes. A folder with neither is a UserError naming ``--image-dir``."""
    from fpn.data.catalog import resolve_dataset
    from fpn.data.records import load_records
    from fpn.data.transforms import read_image

    root = Path(image_dir)
    if not root.is_dir():
        raise UserError(f"--image-dir {image_dir}: no such folder")
    try:
        spec = resolve_dataset(str(root))
        records = load_records(spec.train_sets or spec.test_sets, spec.classes, category_ids=spec.category_ids or None)
    except UserError:
        records = None
    if records:
        samples = [{"image": read_image(r["image"]), "boxes": torch.from_numpy(np.asarray(r["boxes"], np.float32)),
                    "labels": torch.from_numpy(np.asarray(r["labels"], np.int64))} for r in records[:n]]  # fmt: skip
        return samples, f"{root} (a dataset: {len(spec.classes)} classes, boxes from its annotations)"
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"--image-dir {image_dir}: no VOC/COCO dataset and no .jpg/.jpeg/.png images in it")
    return [{"image": read_image(p), "boxes": None, "labels": None} for p in files[:n]], f"{root} (pictures, no boxes)"


def resize_samples(samples: list[dict], size: tuple[int, int]) -> list[dict]:
    """Each sample resized to ``size`` (w, h) (bilinear, uint8 kept), its boxes scaled per axis."""
    w, h = size
    out = []
    for s in samples:
        image = s["image"]
        ih, iw = image.shape[-2:]
        resized = torch.nn.functional.interpolate(image[None].float(), size=(h, w), mode="bilinear", antialias=True)
        boxes = s["boxes"]
        if boxes is not None:
            boxes = boxes * torch.tensor([w / iw, h / ih, w / iw, h / ih])
        out.append({**s, "image": resized[0].round().clamp(0, 255).to(torch.uint8), "boxes": boxes})
    return out


def wrap_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels 1..C wrapped around into 1..num_classes-1 (a model's classes, background 0 included), so that any
    dataset's boxes can train or feed a model with fewer classes."""
    return (labels - 1) % (num_classes - 1) + 1
