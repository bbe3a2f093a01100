"""``fpn test``: evaluate a checkpoint on a dataset's test split.

The model is rebuilt from the checkpoint alone (its config and classes). A checkpoint of other classes is tested
zero-shot when every class of the dataset matches one of its classes by name (``fpn.interop.transfer``; e.g. a
converted COCO model on PASCAL VOC): the model keeps those classes' rows. Written to the output folder
(default: the checkpoint's folder / ``test_<dataset>``):

- ``results/comp4_det_{split}_{class}.txt``: VOC result files (``fpn voc-eval --results-dir`` reads them),
  with ``--metric voc07|area``;
- ``results/coco_results.json`` (COCO results format, the dataset's category ids) with ``--metric coco``,
  plus ``results/coco_gt.json`` (the ground truth in COCO form) when the dataset is not COCO JSON itself
  (``fpn coco-eval --gt ... --results ...`` reads them);
- ``detections.json``: every detection per image, boxes continuous xyxy in original-image pixels;
- ``pr_curves.png``: precision/recall curve per class;
- ``vis/<id>.jpg`` with ``--vis N``: the first N test images with their detections drawn.

The metric defaults to the dataset's (coco for COCO JSON, voc07 or area for VOC). The evaluation reads
the result files back, so the printed numbers are exactly those ``fpn voc-eval`` / ``fpn coco-eval``
give for them. The last line printed is ``mAP = ...``. The evaluation after training goes the same way
at the recipe's batch size and precision: ``--bs``/``--amp`` set to those reproduce its numbers exactly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fpn import config as C
from fpn.checkpoint import (
    build_model_from_checkpoint,
    checkpoint_config,
    dataset_dirname,
    load_checkpoint,
)
from fpn.commands import flags
from fpn.engine.device import OUT_OF_MEMORY, resolve_device, resolve_precision, test_out_of_memory
from fpn.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a .pth file written by fpn train")
    p.add_argument("--dataset", help="dataset to test on (default: the checkpoint's); its classes must match")
    p.add_argument("--data-dir", help="folder holding the datasets (default: the checkpoint's data_dir)")
    p.add_argument("--output-dir", metavar="DIR", help="where results go (default: CHECKPOINT_DIR/test_<dataset>)")
    p.add_argument("--metric", choices=("coco", "voc07", "area"),
                   help="coco (AP@[.50:.95], ...), voc07 (11-point AP@0.5) or area (VOC2010+ AP@0.5); "
                   "default: the dataset's (coco for COCO JSON)")  # fmt: skip
    p.add_argument("--json", metavar="FILE", help="also write {metric, ap, map[, stats]} as JSON (as *-eval do)")
    p.add_argument("--vis", type=int, default=0, metavar="N", help="save N test images with detections drawn")
    p.add_argument("--vis-thresh", type=float, default=0.5, help="score threshold of drawn boxes (default 0.5)")
    p.add_argument("--soft-nms", action="store_true", help="soft-NMS instead of NMS in post-processing")
    p.add_argument("--bs", type=int, default=4, help="images per batch (default 4)")
    flags.add_device(p)
    flags.add_amp(p)
    flags.add_set(p, "model.score_thresh=0.01")
    flags.add_progress(p)


def run(args: argparse.Namespace) -> int:
    from fpn.engine.inference import evaluate_outputs, predict_records
    from fpn.data.datasets import resolve, split_records
    from fpn.visualize import detections_record, draw_detections
    from fpn.evaluation.report import format_table, plot_pr_curves, write_json
    from fpn.io import atomic_write_text

    if args.bs < 1:
        raise UserError(f"--bs {args.bs}: must be at least 1")
    if args.vis < 0:
        raise UserError(f"--vis {args.vis}: must be 0 or more")
    device = resolve_device(args.device or "auto")
    precision = resolve_precision(args.amp or "auto", device)  # a precision the device lacks fails before any loading
    print(f"precision: {precision}")
    path = Path(args.checkpoint)
    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    cfg.data.dataset = args.dataset or ckpt["dataset"]
    if args.dataset:  # a dataset named here replaces the checkpoint's explicit COCO files
        cfg.data.train_json = cfg.data.train_images = cfg.data.test_json = cfg.data.test_images = ""
    if args.data_dir:
        cfg.data.data_dir = args.data_dir
    if args.soft_nms:
        cfg.model.soft_nms = True
    C.apply_overrides(cfg, args.overrides)

    spec = resolve(cfg, generate=True, classes_from="test")
    metric = args.metric or spec.metric
    classes = tuple(spec.classes)
    if tuple(ckpt["classes"]) != classes:
        from fpn.interop.transfer import zero_shot_checkpoint

        ckpt, match = zero_shot_checkpoint(ckpt, path, classes)
        print(f"zero-shot: {match.describe()}")
    records = split_records(spec, "test")
    split = spec.test_sets[0].split
    model = build_model_from_checkpoint(ckpt, path, cfg, device)
    try:
        ids, outputs = predict_records(model, cfg, records, classes, device, args.bs, amp=precision.amp,
                                       progress=args.progress, desc=f"test {split}")  # fmt: skip
    except OUT_OF_MEMORY:
        raise test_out_of_memory(device, "test step", args.bs, cfg.data, precision) from None

    out_dir = Path(args.output_dir) if args.output_dir else path.parent / f"test_{dataset_dirname(cfg.data.dataset)}"
    _, result = evaluate_outputs(ids, outputs, records, classes, metric, split, out_dir / "results", spec=spec)

    by_id = dict(zip(ids, outputs))
    images = [detections_record(r["id"], str(r["image"]), by_id[r["id"]], classes) for r in records]
    info = {
        "checkpoint": str(path), "dataset": cfg.data.dataset, "split": split, "classes": list(classes),
        "box_format": "xyxy, continuous pixel coordinates of the original image (VOC box = x1+1, y1+1, x2, y2)",
        "images": images,
    }  # fmt: skip
    atomic_write_text(out_dir / "detections.json", json.dumps(info) + "\n")
    plot_pr_curves(result, out_dir / "pr_curves.png")
    if args.json:
        write_json(result, args.json)
    if args.vis:
        _save_vis(records[: args.vis], by_id, classes, out_dir / "vis", args.vis_thresh, draw_detections)

    print(f"{len(records)} {split} images of {cfg.data.dataset}; results in {out_dir}")
    print(format_table(result))
    return 0


def _save_vis(records, by_id, classes, vis_dir: Path, thresh: float, draw) -> None:
    from PIL import Image

    from fpn.io import atomic_open

    for r in records:
        with Image.open(r["image"]) as im:
            drawn = draw(im, by_id[r["id"]], classes, thresh)
        with atomic_open(vis_dir / f"{r['id']}.jpg", "wb") as f:
            drawn.save(f, format="JPEG", quality=90)
