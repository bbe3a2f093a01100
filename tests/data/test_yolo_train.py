"""A YOLO-layout copy of a VOC dataset trains to the mAP the VOC layout gives (issue 29): the same recipe, seed and
images; the copy written by ``fpn.data.writers.write_yolo_dataset``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fpn.cli import main
from fpn.data.catalog import resolve_dataset
from fpn.data.records import load_records
from fpn.data.synthetic import generate
from fpn.data.voc import to_voc_box, write_voc_xml
from fpn.data.writers import write_yolo_dataset

pytestmark = pytest.mark.slow  # two tiny trainings

# tests/commands/tiny_run.py's settings: 128 px images, no flip, small RPN/RoI batches
TINY = ["data.train_scales=128", "data.test_scale=128", "data.max_size=160", "data.flip=False",
        "model.rpn_batch_per_image=64", "model.roi_batch_per_image=32", "solver.warmup_iters=2"]  # fmt: skip


def _flat_voc(src, out):
    """The VOC folder ``src`` rewritten without difficult flags (YOLO has none: a difficult object would be an
    object in the copy but ignored in the original, and the two would not score alike)."""
    spec = resolve_dataset(str(src))
    (out / "JPEGImages").mkdir(parents=True)
    (out / "ImageSets" / "Main").mkdir(parents=True)
    for split, image_set in (("trainval", spec.train_sets), ("test", spec.test_sets)):
        records = load_records(image_set, spec.classes)
        for r in records:
            shutil.copy(r["image"], out / "JPEGImages" / f"{r['id']}.jpg")
            objects = [{"name": spec.classes[lab - 1], "bbox": [round(v) for v in to_voc_box(box)]}
                       for box, lab in zip(r["boxes"].tolist(), r["labels"].tolist())]  # fmt: skip
            write_voc_xml(out / "Annotations" / f"{r['id']}.xml", f"{r['id']}.jpg", r["width"], r["height"], objects)
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{r['id']}\n" for r in records))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in spec.classes))
    return out


def _train(dataset, save_dir, split: str) -> dict:
    assert main(["train", "--dataset", str(dataset), "--preset", "synthetic", "--save-dir", str(save_dir), "--bs", "2",
                 "--workers", "0", "--epochs", "1", "--amp", "none", "--no-progress", "--set", *TINY]) == 0  # fmt: skip
    return json.loads((save_dir / "res18" / dataset.name / "default" / f"eval_{split}.json").read_text())


def test_yolo_copy_trains_to_the_voc_map(tmp_path, capsys):
    voc = _flat_voc(generate(tmp_path / "shapes", seed=0, n_train=8, n_test=4), tmp_path / "voc")
    spec = resolve_dataset(str(voc))
    splits = {"train": load_records(spec.train_sets, spec.classes), "val": load_records(spec.test_sets, spec.classes)}
    yolo = write_yolo_dataset(tmp_path / "yolo", splits, spec.classes)
    yspec = resolve_dataset(str(yolo))
    assert yspec.classes == spec.classes and yspec.metric == spec.metric == "voc07"
    # the records are the same: 6 decimals of a normalised coordinate come back as the whole pixel they were
    for split, image_sets in (("train", yspec.train_sets), ("val", yspec.test_sets)):
        for a, b in zip(splits[split], load_records(image_sets, yspec.classes), strict=True):
            assert (a["id"], a["width"], a["height"]) == (b["id"], b["width"], b["height"])
            np.testing.assert_array_equal(a["boxes"], b["boxes"])
            np.testing.assert_array_equal(a["labels"], b["labels"])

    by_voc = _train(voc, tmp_path / "runs", "test")
    by_yolo = _train(yolo, tmp_path / "runs", "val")
    out = capsys.readouterr().out
    assert f"dataset {yolo}: YOLO txt (Ultralytics layout, classes from data.yaml): train images/train/" in out
    # fp32 on the CPU is deterministic and the inputs are equal, so the runs are equal: the mAPs can only differ
    # where a coordinate is not within 6 decimals of a whole pixel (then it comes back up to 0.75e-6 of the image
    # side off, which can flip an anchor's IoU tie and with it the sampled anchors)
    assert by_voc["map"] > 0.01  # it learnt something: the equality below is not 0 == 0
    assert by_yolo["map"] == pytest.approx(by_voc["map"], abs=1e-9)
    assert by_yolo["ap"] == pytest.approx(by_voc["ap"], abs=1e-9)
