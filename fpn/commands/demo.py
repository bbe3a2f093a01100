"""``fpn demo``: detect objects in images and draw them.

For every input image (files, or folders scanned for image files) writes ``OUT/<name>.jpg`` with boxes,
class names and scores drawn, and ``OUT/detections.json`` with the detections of score >= ``--thresh``
(boxes continuous xyxy in the image's pixels).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fpn.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a .pth file written by fpn train")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--thresh", type=float, default=0.5, help="minimum score of a shown detection (default 0.5)")
    p.add_argument("--bs", type=int, default=1, help="images per batch (default 1)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--amp", default="auto", help="auto | none | bf16 | fp16 inference precision (default auto)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override test-time config fields, e.g. --set model.nms_thresh=0.4")  # fmt: skip
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")


def collect_images(inputs: list[str]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted); UserError for anything missing."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise UserError(f"{p}: folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise UserError(f"{p}: image not found")
    return paths


def image_records(paths: list[Path]) -> list[dict]:
    """Annotation-free records (what the test loader reads) for the images; UserError for unreadable ones."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    records = []
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:
                width, height = im.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{path}: not a readable image ({reason})") from None
        records.append({
            "id": str(i), "image": str(path), "width": width, "height": height,
            "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
            "difficult": np.zeros(0, bool), "truncated": np.zeros(0, bool),
        })  # fmt: skip
    return records


def output_names(paths: list[Path]) -> list[str]:
    """``<stem>.jpg`` per image; a repeated stem gets ``_<n>`` appended."""
    names, seen = [], {}
    for p in paths:
        stem = p.stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        names.append(f"{stem}.jpg" if n == 0 else f"{stem}_{n}.jpg")
    return names


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from fpn import config as C
    from fpn.commands.test import build_model_from_checkpoint, checkpoint_config
    from fpn.engine.checkpoint import load_checkpoint
    from fpn.engine.device import resolve_device, resolve_precision
    from fpn.engine.inference import predict_records
    from fpn.engine.visualize import detections_record, draw_detections
    from fpn.io import atomic_open, atomic_write_text

    if args.bs < 1:
        raise UserError(f"--bs {args.bs}: must be at least 1")
    if not 0.0 <= args.thresh <= 1.0:
        raise UserError(f"--thresh {args.thresh}: expected a score between 0 and 1")
    device = resolve_device(args.device)
    precision = resolve_precision(args.amp, device)  # a precision the device lacks fails before any loading
    print(f"precision: {precision}")
    paths = collect_images(args.images)
    records = image_records(paths)
    ckpt = load_checkpoint(args.checkpoint)
    cfg = checkpoint_config(ckpt, args.checkpoint)
    C.apply_overrides(cfg, args.overrides)
    classes = tuple(ckpt["classes"])
    model = build_model_from_checkpoint(ckpt, args.checkpoint, cfg, device)
    ids, outputs = predict_records(
        model, cfg, records, classes, device, args.bs, amp=precision.amp, progress=args.progress, desc="demo"
    )
    by_id = dict(zip(ids, outputs))

    out = Path(args.out)
    results = []
    for rec, name in zip(records, output_names(paths)):
        output = by_id[rec["id"]]
        with Image.open(rec["image"]) as im:
            drawn = draw_detections(im, output, classes, args.thresh)
        with atomic_open(out / name, "wb") as f:
            drawn.save(f, format="JPEG", quality=92)
        entry = detections_record(rec["id"], rec["image"], output, classes, args.thresh)
        entry["output"] = name
        del entry["id"]
        results.append(entry)
        dets = entry["detections"]
        summary = ", ".join(f"{d['class']} {d['score']:.2f}" for d in dets[:6]) + (" ..." if len(dets) > 6 else "")
        print(f"{rec['image']}: {len(dets)} detection(s){': ' + summary if dets else ''}")
    info = {
        "checkpoint": str(args.checkpoint), "classes": list(classes), "thresh": args.thresh,
        "box_format": "xyxy, continuous pixel coordinates of the image", "images": results,
    }  # fmt: skip
    atomic_write_text(out / "detections.json", json.dumps(info, indent=1) + "\n")
    print(f"wrote {len(records)} image(s) and detections.json to {out}")
    return 0
