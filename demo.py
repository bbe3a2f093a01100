#!/usr/bin/env python3
"""The seed's demo script (whose import was broken in the seed), mapped onto ``fpn demo``.

    python3 demo.py --net res101 --dataset pascal_voc --checksession 1 --checkepoch 12 --checkpoint 5010 \\
        --load_dir weights --image_dir images --cuda

Loads ``{load_dir}/{net}/{dataset}/[exp_name/]fpn_{checksession}_{checkepoch}_{checkpoint}.pth`` (without
the optional exp_name, the seed's folder is tried, then a unique experiment folder holding that file), draws
the detections of score >= ``--thresh`` on every image in ``--image_dir`` and writes them, with
``detections.json``, to ``--output_dir`` (default: ``<image_dir>_det``). On the CPU unless ``--cuda``;
``--amp`` (an extension; default auto) picks the precision as ``fpn demo`` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fpn.seed_scripts import add_amp, add_bool, device_flag, script_main, seed_checkpoint
from fpn.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Detect objects in images (seed-compatible flags)")
    p.add_argument("exp_name", nargs="?", default=None, help="experiment name (run folder), optional")
    p.add_argument("--dataset", default="pascal_voc", help="dataset the model was trained on")
    p.add_argument("--net", default="res101", help="res18 | res34 | res50 | res101 | res152")
    p.add_argument("--load_dir", default="weights", help="directory the models were saved to")
    p.add_argument("--image_dir", default="images", help="folder of images to run on")
    p.add_argument("--output_dir", default=None, help="where the drawn images go (default: <image_dir>_det)")
    p.add_argument("--cuda", action="store_true", help="use CUDA")
    p.add_argument("--mGPUs", action="store_true", help="accepted; the demo uses one device")
    p.add_argument("--cag", action="store_true", help="accepted; taken from the checkpoint")
    add_bool(p, "--vis", default=True, help="accepted; images are always drawn")
    p.add_argument("--checksession", type=int, default=1, help="checksession to load model")
    p.add_argument("--checkepoch", type=int, default=1, help="checkepoch to load model")
    p.add_argument("--checkpoint", type=int, default=0, help="checkpoint (step) to load model")
    p.add_argument("--bs", type=int, default=1, help="batch size")
    p.add_argument("--thresh", type=float, default=0.5, help="minimum score of a drawn detection")
    p.add_argument("--webcam_num", type=int, default=-1, help="webcam input is not supported (-1)")
    add_amp(p)
    return p


def to_fpn_argv(args: argparse.Namespace) -> list[str]:
    """The ``fpn demo`` command line equivalent to the seed flags."""
    if args.webcam_num != -1:
        raise UserError(f"--webcam_num {args.webcam_num}: webcam input is not supported; use --image_dir")
    path = seed_checkpoint(args.load_dir, args.net, args.dataset, args.exp_name,
                           args.checksession, args.checkepoch, args.checkpoint)  # fmt: skip
    image_dir = Path(args.image_dir)
    out = args.output_dir or str(image_dir.parent / f"{image_dir.name}_det")
    argv = ["demo", str(image_dir), "--checkpoint", str(path), "--out", out, "--thresh", str(args.thresh),
            "--bs", str(args.bs), "--device", device_flag(args.cuda)]  # fmt: skip
    return argv + (["--amp", args.amp] if args.amp else [])


def main(argv: list[str] | None = None) -> int:
    return script_main(build_parser, to_fpn_argv, argv)


if __name__ == "__main__":
    sys.exit(main())
