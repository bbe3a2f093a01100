"""Random COCO ground truth + detections for the parity tests (a plain module, imported by the tests)."""

import contextlib
import io
import json

import numpy as np


def random_case(seed: int, n_images: int = 30, n_cats: int = 40) -> tuple[dict, list[dict]]:
    """Ground truth with crowd regions (10%), images without objects (15%), categories without any object
    (the last 3 of more than 3), areas on the small/medium/large boundaries, a zero-width box; detections near objects
    (jittered, some of the wrong class) and anywhere, rounded scores (ties), more than 100 on one image,
    degenerate ones."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(rng.choice(np.arange(1, 300), n_cats, replace=False).tolist())
    images, anns, dets = [], [], []
    for i in range(n_images):
        image_id = 3 * i + 1
        w, h = int(rng.integers(60, 640)), int(rng.integers(60, 640))
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": w, "height": h})
        objects = []
        for _ in range(0 if rng.random() < 0.15 else int(rng.integers(1, 15))):
            bw, bh = rng.uniform(1, w / 2), rng.uniform(1, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            c = int(rng.choice(cat_ids[: max(1, n_cats - 3)]))
            area = float(rng.choice([bw * bh, 32.0**2, 96.0**2, bw * bh * rng.uniform(0.3, 1)]))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": c, "bbox": [x, y, bw, bh],
                         "area": area, "iscrowd": int(rng.random() < 0.1)})  # fmt: skip
            objects.append((x, y, bw, bh, c))
        n_dets = int(rng.integers(0, 40)) + (150 if i == 0 else 0)
        for _ in range(n_dets):
            if objects and rng.random() < 0.6:
                x, y, bw, bh, c = objects[int(rng.integers(len(objects)))]
                j = rng.normal(0, 0.15, 4) * [bw, bh, bw, bh]
                box = [x + j[0], y + j[1], max(0.0, bw + j[2]), max(0.0, bh + j[3])]
                if rng.random() < 0.2:
                    c = int(rng.choice(cat_ids))
            else:
                bw, bh = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
                box, c = [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh], int(rng.choice(cat_ids))
            dets.append({"image_id": image_id, "category_id": c, "bbox": [float(v) for v in box],
                         "score": float(np.round(rng.random(), 2))})  # fmt: skip
    if anns:
        anns[0]["bbox"][2] = 0.0
    return {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids]}, dets


def write_case(folder, gt: dict, dets: list[dict]):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gt.json").write_text(json.dumps(gt))
    (folder / "dets.json").write_text(json.dumps(dets))
    return folder / "gt.json", folder / "dets.json"


def pycocotools_eval(gt_path, dets_path):
    """The reference, used as everyone uses it: COCO(file), loadRes(file), COCOeval bbox."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(str(dets_path)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev
