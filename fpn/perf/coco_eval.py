"""Evaluation timings (docs/PERFORMANCE.md): COCOeval on a val2017-sized random case, per engine.

:func:`time_coco_eval` runs the whole evaluation (ground truth indexed, results loaded, evaluate,
accumulate, summarize) of a generated case in a fresh process per engine and returns seconds and peak
memory; the numbers of the engines are compared too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np


def coco_val_sized_case(n_images: int = 5000, n_classes: int = 80, dets_per_image: int = 100, seed: int = 0):
    """(ground truth, results) like a detector's on COCO val2017: 640x480 images with 0-14 objects (1% crowd),
    ``dets_per_image`` detections per image, a third of them near objects."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"})
        k = int(rng.integers(0, 15))
        xy, wh, c = rng.uniform(0, 400, (k, 2)), rng.uniform(4, 240, (k, 2)), rng.integers(1, n_classes + 1, k)
        for j in range(k):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c[j]), "bbox": [*xy[j], *wh[j]],
                         "area": float(wh[j].prod()), "iscrowd": int(rng.random() < 0.01)})  # fmt: skip
        src, jitter = rng.integers(0, max(k, 1), dets_per_image), rng.normal(0, 0.2, (dets_per_image, 4))
        for j in range(dets_per_image):
            if k and j < 3 * k:
                box, cat = np.r_[xy[src[j]], wh[src[j]]] * (1 + jitter[j] * [0.1, 0.1, 0.5, 0.5]), int(c[src[j]])
            else:
                box, cat = np.r_[rng.uniform(0, 400, 2), rng.uniform(4, 240, 2)], int(rng.integers(1, n_classes + 1))
            dets.append({"image_id": i, "category_id": cat, "bbox": box.tolist(), "score": float(rng.random())})
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, n_classes + 1)]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def eval_once(engine: str, n_images: int, dets_per_image: int) -> dict:
    """One evaluation of :func:`coco_val_sized_case` (run in a fresh process by :func:`time_coco_eval`)."""
    from fpn.perf.data import _rss_mb
    from fpn.evaluation.coco_eval import evaluate_coco

    gt, dets = coco_val_sized_case(n_images, dets_per_image=dets_per_image)
    base = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    result = evaluate_coco(gt, dets, engine=engine)
    return {"seconds": time.perf_counter() - t0, "extra_peak_mb": _rss_mb("VmHWM") - base, "stats": result.stats,
            "ground_truth": len(gt["annotations"]), "detections": len(dets)}  # fmt: skip


def time_coco_eval(n_images: int = 5000, dets_per_image: int = 100,
                   engines: tuple[str, ...] = ("faster-coco-eval", "pycocotools")) -> dict:  # fmt: skip
    """{engine: eval_once(...)} plus ``max_stat_diff``, the largest difference between the engines' 12 numbers."""
    code = ("import json, sys; from fpn.perf.coco_eval import eval_once as f; "
            "print(json.dumps(f(sys.argv[1], *map(int, sys.argv[2:]))))")  # fmt: skip
    out = {}
    for engine in engines:
        run = subprocess.run([sys.executable, "-c", code, engine, str(n_images), str(dets_per_image)],
                             check=True, capture_output=True, text=True)  # fmt: skip
        out[engine] = json.loads(run.stdout.strip().splitlines()[-1])
    stats = [[-1.0 if v is None else v for v in r["stats"].values()] for r in out.values()]
    out["max_stat_diff"] = float(np.abs(np.asarray(stats) - stats[0]).max())
    return out
