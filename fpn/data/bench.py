"""Data pipeline timings (``fpn bench --mode data`` and the README numbers).

- :func:`time_annotation_loading`: parse n VOC-like XML files without a cache, then load them from it.
- :func:`time_loader`: the training loader on VOC-sized JPEGs (500x375 -> 800x600, mirror, normalise).

Both write their inputs under ``tmp_dir`` (a temporary folder when None) and return a dict of numbers.
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
    from fpn.data.catalog import ImageSet, load_records

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
