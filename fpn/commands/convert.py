"""``fpn convert torchvision SRC --out CKPT``: another library's detector weights as an fpn checkpoint.

SRC is a torchvision ``FasterRCNN`` state dict (.pth) or the name ``fasterrcnn_resnet50_fpn``, looked up in the
torch hub cache (never downloaded). The checkpoint (weights only; config + classes + model) loads in ``fpn test``,
``fpn demo`` and ``fpn train --init``. See ``fpn.interop.torchvision`` and docs/TORCHVISION.md.
"""

from __future__ import annotations

import argparse

from fpn.commands import flags

FORMATS = ("torchvision",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=FORMATS, help="the source library (torchvision)")
    p.add_argument("src", metavar="SRC", help="a torchvision FasterRCNN state dict (.pth), or fasterrcnn_resnet50_fpn "
                   "(found in the torch hub cache)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="CKPT", help="the fpn checkpoint to write")
    p.add_argument("--classes", metavar="FILE", help="class names of the model's slots 1..K-1, one per line (N/A for "
                   "an unused slot); default for a 91-slot model: COCO's 80 classes")  # fmt: skip
    flags.add_set(p, "model.score_thresh=0.3", several=False)


def run(args: argparse.Namespace) -> int:
    from fpn.checkpoint import save_checkpoint
    from fpn.interop.torchvision import convert_file

    ckpt = convert_file(args.src, args.classes, args.overrides)
    save_checkpoint(ckpt, args.out)
    info = ckpt["converted_from"]
    dropped = f", {info['dropped_slots']} unused slot(s) dropped" if info["dropped_slots"] else ""
    print(f"converted {info['source']}: {ckpt['net']}-FPN, {len(ckpt['classes'])} classes{dropped}; "
          f"torchvision's conventions (preset torchvision) -> {args.out}")  # fmt: skip
    return 0
