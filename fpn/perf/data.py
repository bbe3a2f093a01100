"""Data pipeline timings (``fpn bench --mode data`` and the README numbers).

- :func:`time_annotation_loading`: parse n VOC-like XML files without a cache, then load them from it.
- :func:`time_loader`: the training loader on VOC-sized JPEGs (500x375 -> 800x600, mirror, normalise).
- :func:`time_coco_loading`: load a generated COCO file of train2017's size, cold and from the cache.

All write their inputs under ``tmp_dir`` (a temporary folder when None) and return a dict of numbers.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from fpn.data.voc import VOC_CLASSES, write_voc_xml


@contextlib.contextmanager
def _folder(tmp_dir: str | Path | None) -> Iterator[Path]:
    if tmp_dir is not None:
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
        yield Path(tmp_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="fpn_bench_") as d:
            yield Path(d)


def write_fake_voc(root: Path, n: int, seed: int = 0, split: str = "trainval") -> int:
    """Write n VOC-like annotations (500x375, 1-5 objects of VOC classes) and empty image files under
    ``root`` (a VOC-layout folder); returns the number of objects."""
    rng = np.random.default_rng(seed)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"{i:06d}" for i in range(1, n + 1)]
    n_objects = 0
    for image_id in ids:
        k = int(rng.integers(1, 6))
        x1, y1 = rng.integers(1, 250, k), rng.integers(1, 180, k)
        x2, y2 = x1 + rng.integers(10, 250, k), y1 + rng.integers(10, 190, k)
        objects = [
            {"name": VOC_CLASSES[int(c)], "bbox": b, "difficult": bool(d), "truncated": False}
            for c, b, d in zip(rng.integers(0, 20, k), zip(x1, y1, x2, y2), rng.random(k) < 0.1)
        ]
        write_voc_xml(root / "Annotations" / f"{image_id}.xml", f"{image_id}.jpg", 500, 375, objects)
        (root / "JPEGImages" / f"{image_id}.jpg").touch()
        n_objects += k
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return n_objects


def time_annotation_loading(n: int = 16500, tmp_dir: str | Path | None = None) -> dict:
    """Seconds to read n annotations with no cache ("cold": the files are in the OS page cache, the
    annotation cache is empty) and again from the cache. Keys: images, objects, cold_s, cached_s."""
    from fpn.data.records import ImageSet, load_records

    with _folder(tmp_dir) as d:
        root = d / "VOCbench"
        n_objects = write_fake_voc(root, n)
        cache = d / "cache"
        for f in cache.glob("*.pkl"):
            f.unlink()
        image_set = ImageSet(root, "trainval")
        t0 = time.perf_counter()
        records = load_records([image_set], VOC_CLASSES, cache_dir=cache)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = load_records([image_set], VOC_CLASSES, cache_dir=cache)
        cached = time.perf_counter() - t0
        assert len(records) == len(again) == n
    return {"images": n, "objects": n_objects, "cold_s": cold, "cached_s": cached}


def write_fake_jpegs(folder: Path, n: int, width: int = 500, height: int = 375, seed: int = 0) -> list[dict]:
    """n JPEGs (quality 90, smooth colour fields plus noise: about VOC's 100 KB per image) and their
    records, each with two boxes."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        low = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
        pixels = np.asarray(low, dtype=np.int16) + rng.integers(-24, 25, (height, width, 3))
        path = folder / f"{i:06d}.jpg"
        buf = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        path.write_bytes(buf.getvalue())
        records.append({
            "id": path.stem, "image": str(path), "width": width, "height": height,
            "boxes": np.array([[10, 20, 200, 300], [250, 50, 499, 374]], dtype=np.float32),
            "labels": np.array([1, 2], dtype=np.int64), "difficult": np.zeros(2, bool), "truncated": np.zeros(2, bool),
        })  # fmt: skip
    return records


def time_loader(
    n_images: int = 200,
    workers: int = 1,
    tmp_dir: str | Path | None = None,
    batch_size: int = 2,
    scale: int = 600,
    max_size: int = 1000,
) -> dict:
    """Throughput of the training loader (decode, mirror, resize to ``scale``/``max_size``, imagenet
    normalisation, padding) over one epoch of n_images and their mirrors. The clock starts at the
    first batch, so worker start-up is reported apart. Keys: workers, images (timed), startup_s,
    images_per_s, images_per_s_per_worker (per process when workers == 0)."""
    from fpn.config import Config
    from fpn.data.loader import build_train_loader

    with _folder(tmp_dir) as d:
        records = write_fake_jpegs(d / "jpegs", n_images)
        cfg = Config()
        cfg.data.train_scales, cfg.data.max_size, cfg.data.flip = (scale,), max_size, True
        cfg.data.normalization, cfg.data.workers = "imagenet", workers
        cfg.solver.batch_size = batch_size
        loader = build_train_loader(cfg, records, VOC_CLASSES)
        t_start = time.perf_counter()
        it = iter(loader)
        next(it)
        t0 = time.perf_counter()
        timed = 0
        for batch in it:
            timed += len(batch)
        elapsed = time.perf_counter() - t0
        del it, loader  # stop the workers before the folder goes
    rate = timed / elapsed if elapsed > 0 else float("nan")
    return {
        "workers": workers,
        "images": timed,
        "startup_s": t0 - t_start,
        "images_per_s": rate,
        "images_per_s_per_worker": rate / max(workers, 1),
    }


# --- COCO-scale annotation loading -------------------------------------------------------------------------

COCO_TRAIN2017 = {"images": 118_287, "annotations": 860_001}  # instances_train2017.json


def write_fake_coco(
    path: Path, n_images: int, n_annotations: int, seed: int = 0, crowd: float = 0.01, images_dir: Path | None = None
) -> dict:
    """Write a COCO annotation file shaped like instances_train2017.json: 80 categories with COCO's id gaps,
    images with COCO's fields, annotations with a polygon of 6-46 points (2 decimals; 26 on average),
    ``crowd`` of them crowd regions with an uncompressed RLE mask, and a few degenerate boxes. Written in
    chunks, so memory stays small; with ``images_dir``, an empty file per image is made there. Returns
    counts and the file size."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(rng.choice(np.arange(1, 91), 80, replace=False).tolist())
    image_ids = rng.choice(np.arange(1, 10 * n_images), n_images, replace=False)
    sizes = rng.choice([(640, 480), (480, 640), (640, 427), (500, 375), (640, 360)], n_images)
    owner = np.sort(rng.integers(0, n_images, n_annotations))
    if images_dir is not None:
        images_dir.mkdir(parents=True, exist_ok=True)
        for i in image_ids.tolist():
            (images_dir / f"{i:012d}.jpg").touch()
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"info":{"description":"fpn fake COCO","version":"1.0","year":2017},"licenses":[{"url":"x","id":1,'
                '"name":"x"}],"images":[')  # fmt: skip
        f.write(",".join(
            f'{{"license":1,"file_name":"{i:012d}.jpg","coco_url":"http://images.cocodataset.org/train2017/{i:012d}'
            f'.jpg","height":{h},"width":{w},"date_captured":"2013-11-14 11:18:45","flickr_url":"http://farm3.'
            f'staticflickr.com/2/{i}_abc.jpg","id":{i}}}'
            for i, (w, h) in zip(image_ids.tolist(), sizes.tolist())
        ))  # fmt: skip
        f.write('],"annotations":[')
        chunk, n_crowd, n_bad = 20_000, 0, 0
        for start in range(0, n_annotations, chunk):
            idx = owner[start : start + chunk]
            k = len(idx)
            w, h = sizes[idx, 0].astype(float), sizes[idx, 1].astype(float)
            bw, bh = w * rng.beta(1.2, 4, k), h * rng.beta(1.2, 4, k)
            x, y = rng.uniform(0, 1, k) * (w - bw), rng.uniform(0, 1, k) * (h - bh)
            bad = rng.random(k) < 2e-4
            bw[bad], n_bad = 0.0, n_bad + int(bad.sum())
            is_crowd = rng.random(k) < crowd
            n_crowd += int(is_crowd.sum())
            points = rng.integers(6, 47, k)
            parts = []
            for j in range(k):
                if is_crowd[j]:
                    counts = ",".join(map(str, rng.integers(1, 400, 40).tolist()))
                    seg = f'{{"counts":[{counts}],"size":[{int(h[j])},{int(w[j])}]}}'
                else:
                    p = np.round(rng.uniform([x[j], y[j]], [x[j] + bw[j], y[j] + bh[j]], (points[j], 2)), 2)
                    seg = "[[" + ",".join(map(str, p.ravel().tolist())) + "]]"
                box = ",".join(map(str, np.round([x[j], y[j], bw[j], bh[j]], 2).tolist()))
                parts.append(
                    f'{{"segmentation":{seg},"area":{round(bw[j] * bh[j] * 0.6, 4)},"iscrowd":{int(is_crowd[j])},'
                    f'"image_id":{image_ids[idx[j]]},"bbox":[{box}],"category_id":{cat_ids[rng.integers(80)]},'
                    f'"id":{start + j + 1}}}'
                )  # fmt: skip
            f.write(("," if start else "") + ",".join(parts))
        f.write('],"categories":[')
        f.write(",".join(f'{{"supercategory":"thing","id":{c},"name":"class{c}"}}' for c in cat_ids))
        f.write("]}\n")
    return {"images": n_images, "annotations": n_annotations, "crowd": n_crowd, "degenerate": n_bad,
            "bytes": path.stat().st_size}  # fmt: skip


def _rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MiB, from /proc (Linux: unlike getrusage's ru_maxrss,
    the peak starts afresh in a new program, not at the forking parent's size); ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def load_coco_once(json_path: str, images_dir: str, cache_dir: str) -> dict:
    """Load one COCO split through the catalog (as training does) and time it; run in a fresh process by
    :func:`time_coco_loading`, so the peak memory is this load's. Keys: seconds, records, boxes,
    extra_peak_mb (peak resident memory minus that after the imports)."""
    import warnings

    from fpn.data.records import CocoSplit, coco_categories, load_records

    base = _rss_mb("VmRSS")
    split = CocoSplit(Path(json_path), Path(images_dir), "train")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fake file's degenerate boxes
        ids, names = coco_categories(split, cache_dir)
        records = load_records([split], names, cache_dir=cache_dir, category_ids=ids)
    seconds = time.perf_counter() - t0
    boxes = sum(len(r["labels"]) for r in records)
    return {"seconds": seconds, "records": len(records), "boxes": boxes, "extra_peak_mb": _rss_mb("VmHWM") - base}


def time_coco_loading(
    tmp_dir: str | Path | None = None,
    n_images: int = COCO_TRAIN2017["images"],
    n_annotations: int = COCO_TRAIN2017["annotations"],
) -> dict:
    """Write a COCO file of train2017's size (:func:`write_fake_coco`, ~450 MB) with an empty image file per
    image, then load it in a fresh process with no cache ("cold": parse + write the cache; the file is in
    the OS page cache) and again from the cache. Keys: the file's counts, cold / cached: seconds,
    extra_peak_mb. Everything is written under ``tmp_dir`` (removed after when None)."""
    import json
    import subprocess
    import sys

    with _folder(tmp_dir) as d:
        path, images, cache = d / "instances_fake.json", d / "images", d / "cache"
        info = write_fake_coco(path, n_images, n_annotations, images_dir=images)
        for f in cache.glob("*.pkl"):
            f.unlink()
        code = "import json, sys; from fpn.perf.data import load_coco_once as f; print(json.dumps(f(*sys.argv[1:])))"
        for phase in ("cold", "cached"):
            out = subprocess.run([sys.executable, "-c", code, str(path), str(images), str(cache)],
                                 check=True, capture_output=True, text=True).stdout  # fmt: skip
            info[phase] = json.loads(out.strip().splitlines()[-1])
    return info
