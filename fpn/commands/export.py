"""``fpn export``: write a checkpoint as one self-contained graph (see :mod:`fpn.export`).

``--format onnx`` (default) writes an ONNX model for ONNX Runtime (``fpn demo --model``, ``fpn.Detector.from_onnx``);
``--format torch-export`` a ``torch.export`` program (``.pt2``, ``torch.export.load(path).module()(image)``).
Input: one uint8 RGB image (3, H, W) of any size; outputs boxes, scores, labels in that image's pixels.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fpn.commands import flags
from fpn.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fpn.export import FORMATS, OPSET

    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a .pth file written by fpn train")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="onnx (default) or torch-export (.pt2)")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (e.g. model.onnx, model.pt2)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET}; at least 16)")
    flags.add_set(p, "model.score_thresh=0.3")


def run(args: argparse.Namespace) -> int:
    from fpn import config as C
    from fpn.checkpoint import build_model_from_checkpoint, checkpoint_config, load_checkpoint
    from fpn.export import export_onnx, export_torch

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name such as {out / 'model.onnx'}")
    if args.format == "onnx":
        missing = [name for name in ("onnx", "onnxscript") if not _importable(name)]
        if missing:
            raise UserError(f"--format onnx needs {' and '.join(missing)}: pip install \"fpn[onnx]\"")
    ckpt = load_checkpoint(args.checkpoint)
    cfg = C.apply_overrides(checkpoint_config(ckpt, args.checkpoint), args.overrides)
    classes = tuple(ckpt["classes"])
    model = build_model_from_checkpoint(ckpt, args.checkpoint, cfg, "cpu")
    start = time.perf_counter()
    if args.format == "onnx":
        export_onnx(model, cfg, classes, out, opset=args.opset)
        what = f"ONNX, opset {args.opset}"
    else:
        export_torch(model, cfg, classes, out)
        what = "torch.export program"
    print(f"wrote {out} ({what}, {len(classes)} classes, {time.perf_counter() - start:.0f} s): input image uint8 "
          f"(3, H, W) RGB of any size, resized to {cfg.data.test_scale} / max {cfg.data.test_size_limit()} inside; outputs "
          f"boxes (D, 4) xyxy in its pixels, scores (D,), labels (D,) int64")  # fmt: skip
    return 0


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
