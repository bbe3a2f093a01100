"""``fpn coco-eval``: score a COCO results file against a COCO annotation file, as pycocotools does.

``--results`` is the COCO results format (``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``
with the annotation file's ids), e.g. ``coco_results.json`` written by ``fpn test --metric coco``. Prints
the per-class AP table, pycocotools' 12 summary lines and ``mAP = ...`` (AP@[.50:.95]).
"""

from __future__ import annotations

import argparse

from fpn.evaluation.coco_eval import ENGINES, evaluate_coco, load_gt, read_results
from fpn.evaluation.report import format_table, write_reports


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, metavar="FILE", help="COCO annotations (e.g. instances_val2017.json)")
    parser.add_argument("--results", required=True, metavar="FILE", help="COCO results (a JSON list of detections)")
    parser.add_argument("--json", metavar="FILE", help="also write {metric, ap, map, stats} as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="also plot per-class precision/recall curves")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="COCOeval implementation (default auto: faster-coco-eval, else pycocotools)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    gt = load_gt(args.gt)
    result = evaluate_coco(gt, read_results(args.results, gt), engine=args.engine)
    print(format_table(result))
    write_reports(result, args.json, args.plot)
    return 0
