"""``fpn synth``: write the synthetic dataset in the VOC layout, as COCO JSON, or both (see ``fpn.data.synthetic``).

A folder that already holds a complete dataset with the same parameters is left alone; a folder of an
earlier or interrupted synthetic dataset is regenerated; any other non-empty folder is refused.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fpn.data import synthetic
from fpn.errors import UserError


FORMAT_CHOICES = {"voc": ("voc",), "coco": ("coco",), "both": ("voc", "coco")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="data/synthetic", metavar="DIR",
                        help="output folder (default: data/synthetic, where '--dataset synthetic' looks "
                        "with the default data dir)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=synthetic.DEFAULT_SEED,
                        help="random seed (default: %(default)s)")  # fmt: skip
    parser.add_argument("--train", type=int, default=synthetic.DEFAULT_TRAIN, metavar="N",
                        help="trainval images (default: %(default)s)")  # fmt: skip
    parser.add_argument("--test", type=int, default=synthetic.DEFAULT_TEST, metavar="N",
                        help="test images (default: %(default)s)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="processes drawing images (default 0: one per CPU core); same files for any N")  # fmt: skip
    parser.add_argument("--format", choices=sorted(FORMAT_CHOICES), default="voc",
                        help="voc (the devkit layout, default), coco (annotations/instances_{trainval,test}.json) "
                        "or both")  # fmt: skip

def summary(info: dict) -> str:
    """One line from the DONE marker: images, objects, classes, truncated / difficult counts."""
    return (
        f"{info['images']} images ({info['n_train']} trainval, {info['n_test']} test, "
        f"{info['empty_images']} without objects), "
        f"{info['objects']} objects of {len(info['classes'])} classes, "
        f"{info['truncated']} truncated, {info['difficult']} difficult, seed {info['seed']}"
    )


def run(args: argparse.Namespace) -> int:
    if args.seed < 0:
        raise UserError(f"--seed: must be >= 0, got {args.seed}")
    for flag, n in (("--train", args.train), ("--test", args.test)):
        if n < 1:
            raise UserError(f"{flag}: must be a positive number of images, got {n}")
    if args.workers < 0:
        raise UserError(f"--workers: must be 0 (one per CPU core) or more, got {args.workers}")
    if args.train + args.test > synthetic.MAX_IMAGES:
        raise UserError(f"--train/--test: at most {synthetic.MAX_IMAGES} images in all")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")

    formats = FORMAT_CHOICES[args.format]
    if synthetic.matches(out, args.seed, args.train, args.test, formats):
        print(f"{out}: already holds this dataset, nothing to do: {summary(synthetic.read_marker(out))}")
        return 0
    start = time.perf_counter()
    synthetic.generate(out, seed=args.seed, n_train=args.train, n_test=args.test, workers=args.workers, formats=formats)
    print(f"{out}: wrote {summary(synthetic.read_marker(out))} in {time.perf_counter() - start:.1f} s")
    return 0
