"""Batched inference over a test split and its evaluation, VOC or COCO (``fpn test`` and evaluation after
training)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from tqdm import tqdm

from fpn.config import Config
from fpn.checkpoint import unwrap
from fpn.engine.device import autocast


@torch.inference_mode()
def predict(
    model: nn.Module, loader, device: torch.device, amp: str = "none", progress: bool = True, desc: str = "test"
) -> tuple[list[str], list[dict]]:
    """Run ``model`` in eval mode over every batch of ``loader``.

    Returns the image ids and one output per image (``boxes`` continuous xyxy in original-image pixels,
    ``scores``, ``labels``), on the CPU, in loader order.
    """
    was_training = model.training
    model.eval()
    ids: list[str] = []
    outputs: list[dict] = []
    total = len(loader.dataset) if hasattr(loader, "dataset") else None
    bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, disable=not progress or None, leave=False)
    try:
        for batch in loader:
            images = batch.inputs(device, non_blocking=True)  # pixels sent, normalised on the device
            with autocast(device, amp):
                outs = unwrap(model).detect_to_host(images, batch.image_sizes,
                                                    original_sizes=[m["orig_size"] for m in batch.metas])
            for meta, out in zip(batch.metas, outs):
                ids.append(meta["id"])
                outputs.append(out)
            bar.update(len(batch.metas))
    finally:
        bar.close()
        model.train(was_training)
    return ids, outputs


def predict_records(
    model: nn.Module,
    cfg: Config,
    records: Sequence[dict],
    classes: Sequence[str],
    device: torch.device,
    batch_size: int,
    amp: str = "none",
    progress: bool = True,
    desc: str = "test",
) -> tuple[list[str], list[dict]]:
    """``predict`` over ``records`` with the test loader (test scale, no flip, each image once)."""
    from fpn.data.loader import build_test_loader

    pin = torch.device(device).type == "cuda"
    loader = build_test_loader(cfg, list(records), classes, batch_size, pin_memory=pin)
    return predict(model, loader, device, amp=amp, progress=progress, desc=desc)


def evaluate_outputs(
    ids: Sequence[str],
    outputs: Sequence[dict],
    records: Sequence[dict],
    classes,
    metric: str,
    split: str,
    results_dir,
    spec=None,
):
    """(detections, EvalResult) of model outputs against the records' ground truth; ``metric`` is voc07,
    area or coco.

    The detections go through result files written to ``results_dir`` and are scored from those files,
    exactly as ``fpn voc-eval`` / ``fpn coco-eval`` would score them: the evaluation after training and
    ``fpn test`` therefore print the same numbers for the same outputs. VOC: the devkit's result files
    (scores rounded as its format has them). COCO: ``coco_results.json`` in the COCO results format; the
    ground truth is the dataset's own COCO file when ``spec`` (the ``DatasetSpec``) has one test file, else
    the records in COCO form, written as ``coco_gt.json`` beside it.
    """
    if metric == "coco":
        return _evaluate_coco(ids, outputs, records, classes, results_dir, spec)
    from fpn.evaluation.results import detections_from_outputs, read_result_files, write_result_files
    from fpn.evaluation.voc_eval import evaluate, ground_truth_from_records

    classes = tuple(classes)
    detections = detections_from_outputs(list(ids), list(outputs), classes)
    write_result_files(results_dir, split, detections, classes)
    gt = ground_truth_from_records(records, classes)
    result = evaluate(read_result_files(results_dir, split, classes, gt.keys()), gt, classes, metric=metric)
    return detections, result


def _evaluate_coco(ids, outputs, records, classes, results_dir, spec):
    from pathlib import Path

    from fpn.data.records import CocoSplit
    from fpn.data.coco import coco_image_ids, records_to_coco, write_coco_json
    from fpn.evaluation.coco_eval import evaluate_coco, load_gt, read_results, results_from_outputs, write_results

    results_dir = Path(results_dir)
    test_sets = list(spec.test_sets) if spec is not None else []
    if len(test_sets) == 1 and isinstance(test_sets[0], CocoSplit):
        gt, category_ids = load_gt(test_sets[0].json), spec.category_ids
    else:
        category_ids = list(range(1, len(classes) + 1))
        gt = records_to_coco(records, classes, category_ids)
        write_coco_json(results_dir / "coco_gt.json", gt)
    image_id = dict(zip((str(r["id"]) for r in records), coco_image_ids(records)))
    path = write_results(results_dir / "coco_results.json", results_from_outputs(ids, outputs, image_id, category_ids))
    results = read_results(path, gt)
    return results, evaluate_coco(gt, results)
