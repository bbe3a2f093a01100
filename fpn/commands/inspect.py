"""``fpn inspect --dataset NAME_OR_PATH``: a look at a dataset before training.

Prints, per split: images, those without objects, objects per class (difficult and crowd apart), box sizes at the
network's input (after the config's resize) against the anchor sizes, the pyramid level each box goes to, bad
boxes and why; then duplicate images and warnings (see :mod:`fpn.data.summary`). Writes into ``--out``
``summary.json`` (the same numbers), and per split ``contact_sheet_<split>.png`` (``--sheet N`` images with their
boxes and class names) and ``box_sizes_<split>.png`` (sizes per class, the anchor sizes marked).

The config (resize, anchors) is the one ``fpn train`` would use: the dataset's preset, or ``--preset``,
``--config``, and ``--set``. Any dataset ``fpn train`` reads works; only the records are read (cached), images are
opened only for the contact sheet and to compare files of equal byte size (``--no-duplicates`` skips that).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from fpn import config as C
from fpn.commands import flags
from fpn.errors import UserError

SPLITS = ("all", "train", "test")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, metavar="NAME_OR_PATH", help="pascal_voc, pascal_voc_0712, synthetic, coco, or a dataset "
                   "folder (VOC layout or COCO JSON)")  # fmt: skip
    p.add_argument("--data-dir", help="folder holding VOCdevkit2007/..., synthetic/, coco/ (default: data)")
    p.add_argument("--split", choices=SPLITS, default="all", help="which splits to count (default: all)")
    p.add_argument("--out", metavar="DIR", help="where summary.json and the PNGs go (default: "
                   "SAVE_DIR/inspect/DATASET, e.g. runs/inspect/synthetic)")  # fmt: skip
    p.add_argument("--sheet", type=int, default=16, metavar="N",
                   help="images on each split's contact sheet, spread evenly over the split (default 16; 0: none)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="draw the box-size plots (default: on)")
    p.add_argument("--duplicates", action=argparse.BooleanOptionalAction, default=True,
                   help="look for images with identical bytes (default: on; reads only files whose size equals "
                   "another's)")  # fmt: skip
    p.add_argument("--preset", help=f"the resize and anchors of this preset instead of the dataset's "
                   f"({', '.join(C.PRESETS)})")  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="the resize and anchors of this config.json (e.g. a run's)")
    flags.add_set(p, "model.anchor_sizes=16,32,64,128,256")


def build_config(args: argparse.Namespace) -> C.Config:
    if args.preset and args.config:
        raise UserError("--preset: cannot be combined with --config (it carries a whole config)")
    if args.config:
        cfg = C.load_json(args.config)
    elif args.preset:
        cfg = C.get_preset(args.preset)
    else:
        cfg = C.preset_for_dataset(args.dataset)
    cfg.data.dataset = args.dataset
    if args.data_dir:
        cfg.data.data_dir = args.data_dir
    C.apply_overrides(cfg, args.overrides)
    return cfg.validate()


def run(args: argparse.Namespace) -> int:
    from fpn.data.datasets import resolve
    from fpn.data.summary import Geometry, format_summary, inspect_dataset
    from fpn.io import atomic_write_text

    if args.sheet < 0:
        raise UserError(f"--sheet {args.sheet}: expected 0 (no contact sheet) or a number of images")
    cfg = build_config(args)
    start = time.perf_counter()
    spec = resolve(cfg, generate=False, log=lambda *a, **k: None)  # the summary names the layout
    geometry = Geometry.from_config(cfg)
    roles = ("train", "test") if args.split == "all" else (args.split,)
    out = Path(args.out) if args.out else Path(cfg.save_dir) / "inspect" / Path(spec.name).name
    _check_writable(out)  # before the counting, not after it
    found = inspect_dataset(spec, geometry, roles, duplicates=args.duplicates)
    counted = time.perf_counter() - start
    summary = {**found.summary, "config": {"preset": cfg.preset, "train_scales": list(cfg.data.train_scales)}}
    print(format_summary(summary))
    written = [out / "summary.json"]
    try:
        atomic_write_text(written[0], json.dumps(summary, indent=1) + "\n")
        _pictures(args, spec, found, summary, geometry, out, written)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write ({e.strerror or e})") from None
    print(f"counted in {counted:.1f} s; wrote {written[0]}"
          + "".join(f", {p.name}" for p in written[1:]))  # fmt: skip
    return 0


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"--out {out}: the folder is not writable")


def _pictures(args, spec, found, summary: dict, geometry, out: Path, written: list) -> None:
    """Per split, the contact sheet and the box-size plot, their paths appended to ``written``."""
    from fpn.io import atomic_write_bytes

    for role, records in found.records.items():
        if args.sheet and records:
            from fpn.visualize import contact_sheet

            sheet = contact_sheet(records, spec.classes, args.sheet, use_difficult=geometry.use_difficult)
            written.append(out / f"contact_sheet_{role}.png")
            _save_png(sheet, written[-1], atomic_write_bytes)
        if args.plots:
            from fpn.visualize import plot_box_sizes

            objects = found.objects[role]
            s = summary["splits"][role]
            title = (f"{Path(spec.name).name} {role} ({' + '.join(s['splits'])}): {s['objects']} objects, resized to "
                     f"shorter side {s['input_resize']['scale']} (longer <= {s['input_resize']['max_size']})")  # fmt: skip
            png = plot_box_sizes(objects.labels, objects.sizes, spec.classes, geometry.anchor_sizes, geometry.reach,
                                 title)  # fmt: skip
            written.append(out / f"box_sizes_{role}.png")
            atomic_write_bytes(written[-1], png)


def _save_png(image, path: Path, write) -> None:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    write(path, buf.getvalue())
