"""The COCO-scale loading benchmark, on a small file (the real size runs by hand: docs/PERFORMANCE.md)."""

import json

from fpn.perf.data import time_coco_loading


def test_coco_loading_benchmark_times_a_cold_and_a_cached_load(tmp_path):
    info = time_coco_loading(tmp_path, n_images=300, n_annotations=2000)
    assert (info["images"], info["annotations"]) == (300, 2000) and info["bytes"] > 2000 * 150
    text = json.loads((tmp_path / "instances_fake.json").read_text())
    assert len(text["images"]) == 300 and len(text["annotations"]) == 2000 and len(text["categories"]) == 80
    assert sum(a["iscrowd"] for a in text["annotations"]) == info["crowd"]
    kept = sum(a["bbox"][2] > 0 and a["bbox"][3] > 0 for a in text["annotations"])  # degenerate ones are dropped
    assert kept <= 2000 - info["degenerate"]
    for phase in ("cold", "cached"):
        assert info[phase]["records"] == 300 and info[phase]["boxes"] == kept
        assert info[phase]["seconds"] > 0 and info[phase]["extra_peak_mb"] >= 0
    assert list((tmp_path / "cache").glob("*.pkl"))
