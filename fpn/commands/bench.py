"""``fpn bench``: time training steps, inference and the data loader (see fpn/perf/bench.py).

What runs is a preset (``--preset``, default ``voc07_res101``: res101, batch 2, scale 600 / max 1000, SGD,
``--amp auto``) with ``--net``, ``--bs``, ``--scale``, ``--max-size``, ``--amp`` and ``--channels-last``
replacing its values (and ``--set`` for any other field); ``--mode train`` runs the trainer's own step for it.

Weights and images (fpn/perf/weights.py): ``--weights`` (a torchvision Faster R-CNN state dict, loaded by
both models, or an fpn checkpoint), else with ``--compare torchvision`` torchvision's model pretrained briefly on
the bench images (``--pretrain-iters``) and given to both; ``--image-dir`` (a VOC/COCO dataset folder or any
folder of pictures), else synthetic images. ``--profile``: aten operations per training step and per inference
batch (a CPU proxy for kernel launches), host syncs with their source lines, and on CUDA the kernel time, busy
fraction, launches and top kernels of each run.
"""

from __future__ import annotations

import argparse
import json

from fpn.commands import flags
from fpn.errors import UserError


def _size(text: str) -> tuple[int, int] | None:
    if text.lower() == "none":
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w > 0 and h > 0:
            return w, h
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 500x375, got '{text}'")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fpn.config import PRESETS

    p.add_argument("--preset", default="voc07_res101",
                   help=f"the recipe to time, as it trains ({', '.join(PRESETS)}; default voc07_res101)")  # fmt: skip
    flags.add_net(p, "the preset's, res101")
    p.add_argument("--bs", type=int, help="batch size (default: the preset's, 2)")
    p.add_argument("--scale", type=int, help="shorter side after resize (default: the preset's, 600)")
    p.add_argument("--max-size", type=int, help="longer side limit (default: the preset's, 1000)")
    p.add_argument("--image-size", type=_size, default=(500, 375),
                   help="resize every bench image to WxH first (default 500x375, VOC's usual size; 'none': keep "
                   "each image's size)")
    p.add_argument("--weights", help="a torchvision Faster R-CNN state dict (.pth; both models load it) or an fpn "
                   "checkpoint (ours only)")
    p.add_argument("--image-dir", help="images to run on: a VOC/COCO dataset folder (its boxes are the training "
                   "targets) or any folder of .jpg/.png (default: synthetic images made for the run)")
    p.add_argument("--pretrain-iters", type=int, help="with --compare torchvision and no --weights: train "
                   "torchvision's model this many iterations first (default 150 on a GPU, 60 on a CPU at scale <= 320)")
    p.add_argument("--save-weights", help="write the torchvision state dict both models ran to this file")
    p.add_argument("--profile", action="store_true", help="aten ops and host syncs (with their source lines) per "
                   "iteration; on CUDA also kernel time, busy fraction, launches and top kernels")
    flags.add_set(p, "runtime.fuse_frozen_bn=False runtime.nms_impl=offset")
    flags.add_amp(p)
    p.add_argument("--mode", default="train", choices=["train", "infer", "data", "all"])
    flags.add_device(p)
    p.add_argument("--compare", choices=["torchvision"],
                   help="also time torchvision's Faster R-CNN FPN, on the same weights as ours")
    p.add_argument("--onnx", action="store_true",
                   help="inference: also time our model exported to ONNX, in onnxruntime (CPU, batch 1)")
    p.add_argument("--channels-last", action="store_true", default=None,
                   help="run our model in channels_last layout (default: runtime.channels_last, on)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3)")
    p.add_argument("--iters", type=int, default=10, help="timed iterations (default 10)")
    p.add_argument("--workers", type=int, default=1, help="loader workers for --mode data (default 1)")
    p.add_argument("--images", type=int, default=100, help="images for --mode data (default 100)")
    p.add_argument("--json", help="write the results as JSON to this file")


def run(args: argparse.Namespace) -> int:
    from fpn.perf.bench import bench_config, format_results, run_benchmarks
    from fpn.engine.device import prepare_for_speed, resolve_device, resolve_precision
    from fpn.io import atomic_write_text

    for flag, value in (("--bs", args.bs), ("--scale", args.scale), ("--max-size", args.max_size),
                        ("--iters", args.iters), ("--images", args.images)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    if args.warmup < 0 or args.workers < 0:
        raise UserError("--warmup and --workers must not be negative")
    cfg = bench_config(args.preset, net=args.net, batch=args.bs, scale=args.scale, max_size=args.max_size,
                       channels_last=args.channels_last)  # fmt: skip
    flags.apply_runtime(cfg, args)
    if args.pretrain_iters is not None and args.pretrain_iters < 0:
        raise UserError(f"--pretrain-iters {args.pretrain_iters}: must not be negative")
    device = resolve_device(cfg.runtime.device)
    prepare_for_speed(device)
    results: dict = {}
    if args.mode != "data":
        print(f"precision: {resolve_precision(cfg.runtime.amp, device)}", flush=True)
        results = run_benchmarks(cfg, args.mode, device, image_size=args.image_size, compare=args.compare,
                                 warmup=args.warmup, iters=args.iters, onnx=args.onnx, weights=args.weights,
                                 image_dir=args.image_dir, pretrain_iters=args.pretrain_iters,
                                 save_weights=args.save_weights, profile=args.profile)  # fmt: skip
        print(format_results(results))
    if args.mode in ("data", "all"):
        from fpn.perf.data import time_loader

        data = time_loader(n_images=args.images, workers=args.workers, batch_size=cfg.solver.batch_size,
                           scale=cfg.data.train_scales[0], max_size=cfg.data.max_size)
        results["data"] = data
        print(f"data loader: {data['images_per_s']:.1f} images/s with {data['workers']} worker(s) "
              f"({data['images_per_s_per_worker']:.1f} per worker), start-up {data['startup_s']:.1f} s")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0
