"""``fpn voc-eval``: evaluate VOC result files against a devkit's annotations, as the devkit does.

Needs only ``DIR/VOC{year}/Annotations`` and ``DIR/VOC{year}/ImageSets/Main/{split}.txt`` (no images).
``--year 0712`` means the VOC2007 annotations and default results folder ``results/VOC2007/Main`` (07+12
training is tested on VOC2007) with the voc07 metric; otherwise the metric defaults to voc07 before 2010 and to area from 2010 on.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from fpn.data.catalog import read_classes
from fpn.data.records import read_image_list
from fpn.data.voc import VOC_CLASSES, parse_voc_xml
from fpn.errors import UserError
from fpn.evaluation.report import format_table, write_reports
from fpn.evaluation.results import read_result_files
from fpn.evaluation.voc_eval import METRICS, evaluate, ground_truth_from_records

_BAD_NAME_CHARS = re.compile(r"[\s,/\\]")  # whitespace, the --classes separator, path separators


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devkit", required=True, help="VOCdevkit folder (holds VOC{year}/ and results/)")
    parser.add_argument("--year", default="2007", help="2007, 2012, ... or 0712 (= VOC2007 test; default 2007)")
    parser.add_argument("--split", default="test", help="image set in ImageSets/Main (default test)")
    parser.add_argument(
        "--results-dir", help="folder of comp4_det_{split}_{class}.txt (default DIR/results/VOC{year}/Main)"
    )
    parser.add_argument("--metric", choices=METRICS, help="voc07 (11-point) or area; default from --year")
    parser.add_argument(
        "--classes", help="comma-separated class names (default VOC{year}/classes.txt, else the 20 VOC classes)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write per-class AP and mAP as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="also plot precision/recall curves")


def resolve_year(year: str) -> tuple[str, str]:
    """``--year`` -> (annotation year folder suffix, default metric)."""
    if year == "0712":
        return "2007", "voc07"
    if not re.fullmatch(r"\d{4}", year):
        raise UserError(f"--year: expected a year such as 2007 or 2012, or 0712, got '{year}'")
    return year, "voc07" if int(year) < 2010 else "area"


def _check_classes(classes: list[str], source: str) -> tuple[str, ...]:
    """Names as the data catalog takes them: case kept (result file names), matched case-insensitively."""
    if not classes:
        raise UserError(f"{source}: no class names")
    seen = set()
    for name in classes:
        if _BAD_NAME_CHARS.search(name):
            raise UserError(f"{source}: bad class name '{name}' (no whitespace, ',', '/' or '\\')")
        if name.lower() in ("__background__", "background"):
            raise UserError(f"{source}: do not list the background class; it is implicit")
        if name.lower() in seen:
            raise UserError(f"{source}: class '{name}' is listed twice")
        seen.add(name.lower())
    return tuple(classes)


def resolve_classes(arg: str | None, voc_dir: Path) -> tuple[str, ...]:
    if arg is not None:
        return _check_classes([c.strip() for c in arg.split(",") if c.strip()], "--classes")
    path = voc_dir / "classes.txt"
    if path.is_file():  # the data catalog's reader, plus this command's file-name rules
        return _check_classes(list(read_classes(path)), str(path))
    return VOC_CLASSES


def run(args: argparse.Namespace) -> int:
    devkit = Path(args.devkit)
    if not devkit.is_dir():
        raise UserError(f"--devkit {devkit}: folder not found")
    ann_year, default_metric = resolve_year(str(args.year))
    voc_dir = devkit / f"VOC{ann_year}"
    if not voc_dir.is_dir():
        raise UserError(f"{voc_dir}: not found (expected the VOC{ann_year} folder inside --devkit)")
    ann_dir = voc_dir / "Annotations"
    if not ann_dir.is_dir():
        raise UserError(f"{ann_dir}: annotations folder not found")
    classes = resolve_classes(args.classes, voc_dir)
    image_ids, _ = read_image_list(voc_dir / "ImageSets" / "Main" / f"{args.split}.txt", args.split)

    class_to_label = {c.lower(): i for i, c in enumerate(classes, start=1)}  # the XML parser lowercases names
    # The image is never opened; its path only fills the record.
    records = [
        parse_voc_xml(ann_dir / f"{i}.xml", class_to_label, voc_dir / "JPEGImages" / f"{i}.jpg") for i in image_ids
    ]
    results_dir = Path(args.results_dir) if args.results_dir else devkit / "results" / f"VOC{ann_year}" / "Main"
    detections = read_result_files(results_dir, args.split, classes, image_ids=image_ids)

    result = evaluate(detections, ground_truth_from_records(records, classes), classes, args.metric or default_metric)
    print(format_table(result))
    write_reports(result, args.json, args.plot)
    return 0
