import pytest
import torch

from fpn.perf.data import write_fake_jpegs
from fpn.perf.images import folder_samples, resize_samples, synthetic_samples
from fpn.errors import UserError


def test_synthetic_samples_are_the_datasets_images_with_their_boxes():
    from fpn.data.synthetic import render_image

    samples = synthetic_samples(3)
    for index, s in enumerate(samples):
        _, w, h, objects = render_image(0, index)
        assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, h, w)
        assert s["boxes"].shape == (len(objects), 4) and s["labels"].shape == (len(objects),)
        if objects:  # VOC's 1-based inclusive box -> continuous (x1 - 1, y1 - 1, x2, y2)
            x1, y1, x2, y2 = objects[0]["bbox"]
            assert s["boxes"][0].tolist() == [x1 - 1, y1 - 1, x2, y2]


def test_resize_samples_scales_boxes_per_axis():
    s = {"image": torch.zeros(3, 100, 200, dtype=torch.uint8), "boxes": torch.tensor([[10.0, 20.0, 110.0, 60.0]]),
         "labels": torch.tensor([1])}  # fmt: skip
    (r,) = resize_samples([s], (100, 200))
    assert r["image"].shape == (3, 200, 100) and r["image"].dtype == torch.uint8
    assert r["boxes"].tolist() == [[5.0, 40.0, 55.0, 120.0]]


def test_folder_samples_reads_a_dataset_folder_with_boxes(tmp_path):
    from fpn.cli import main

    assert main(["synth", "--out", str(tmp_path / "synthetic"), "--train", "4", "--test", "2"]) == 0
    samples, what = folder_samples(tmp_path / "synthetic", 3)
    assert len(samples) == 3 and "boxes from its annotations" in what
    assert all(s["boxes"] is not None and s["image"].dtype == torch.uint8 for s in samples)


def test_folder_samples_reads_any_pictures_without_boxes(tmp_path):
    write_fake_jpegs(tmp_path / "pics", 3, width=64, height=48)
    samples, what = folder_samples(tmp_path / "pics", 2)
    assert len(samples) == 2 and samples[0]["image"].shape == (3, 48, 64) and samples[0]["boxes"] is None
    assert "no boxes" in what
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="--image-dir .*empty: no VOC/COCO dataset and no .jpg"):
        folder_samples(tmp_path / "empty", 2)
