#!/usr/bin/env python3
"""The seed's test script: its command lines keep working; it maps the flags onto ``fpn test``.

    python3 test_net.py exp_name --dataset pascal_voc --net res101 --checksession 1 --checkepoch 7 \\
        --checkpoint 5010 --cuda --load_dir weights

Loads ``{load_dir}/{net}/{dataset}/{exp_name}/fpn_{checksession}_{checkepoch}_{checkpoint}.pth``, runs the
test split (on the CPU unless ``--cuda``), writes VOC result files, detections and a PR-curve plot to
``--output_dir`` (default: the checkpoint's folder / ``test_<dataset>``) and prints per-class AP and the mAP.
The network and class-agnostic setting come from the checkpoint; ``--net`` and ``--cag`` only locate it.
``--vis`` saves 20 images with detections drawn (``--vis N``: N images). ``--amp`` (an extension; default
auto) picks the precision as ``fpn test`` does.
"""

from __future__ import annotations

import argparse
import sys

from fpn.seed_scripts import add_amp, add_bool, device_flag, script_main, seed_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Test a Feature Pyramid Network (seed-compatible flags)")
    p.add_argument("exp_name", nargs="?", default="default", help="experiment name (run folder)")
    p.add_argument("--dataset", default="pascal_voc", help="pascal_voc | pascal_voc_0712 | synthetic | folder")
    p.add_argument("--net", default="res101", help="res18 | res34 | res50 | res101 | res152")
    p.add_argument("--load_dir", default="weights", help="directory the models were saved to (--save_dir)")
    p.add_argument("--cuda", action="store_true", help="use CUDA")
    p.add_argument("--mGPUs", action="store_true", help="accepted; testing uses one device")
    p.add_argument("--cag", action="store_true", help="accepted; taken from the checkpoint")
    p.add_argument("--vis", type=int, nargs="?", const=20, default=0, metavar="N", help="save N images with boxes")
    add_bool(p, "--soft_nms", help="soft-NMS instead of NMS")
    p.add_argument("--checksession", type=int, default=1, help="checksession to load model")
    p.add_argument("--checkepoch", type=int, default=1, help="checkepoch to load model")
    p.add_argument("--checkpoint", type=int, default=0, help="checkpoint (step) to load model")
    p.add_argument("--data_dir", default="data", help="folder holding VOCdevkit2007/, synthetic/ ...")
    p.add_argument("--bs", type=int, default=None, help="test batch size (default 4)")
    p.add_argument("--output_dir", default=None, help="results folder (default: next to the checkpoint)")
    add_amp(p)
    p.add_argument("--set", dest="set_cfgs", nargs="+", action="extend", default=[], help="key=value overrides")
    return p


def to_fpn_argv(args: argparse.Namespace) -> list[str]:
    """The ``fpn test`` command line equivalent to the seed flags."""
    path = seed_checkpoint(args.load_dir, args.net, args.dataset, args.exp_name,
                           args.checksession, args.checkepoch, args.checkpoint)  # fmt: skip
    argv = ["test", "--checkpoint", str(path), "--dataset", args.dataset, "--data-dir", args.data_dir,
            "--device", device_flag(args.cuda)]  # fmt: skip
    if args.vis:
        argv += ["--vis", str(args.vis)]
    if args.soft_nms:
        argv.append("--soft-nms")
    if args.bs is not None:
        argv += ["--bs", str(args.bs)]
    if args.output_dir:
        argv += ["--output-dir", args.output_dir]
    if args.amp:
        argv += ["--amp", args.amp]
    if args.set_cfgs:
        argv += ["--set", *args.set_cfgs]
    return argv


def main(argv: list[str] | None = None) -> int:
    return script_main(build_parser, to_fpn_argv, argv)


if __name__ == "__main__":
    sys.exit(main())
