"""``fpn test`` end to end: a checkpoint trained for one tiny epoch, evaluated on 4 synthetic test images."""

import json

import pytest
import torch

from fpn.cli import main
from fpn.data.synthetic import SYNTH_CLASSES, generate
from tiny_run import train

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("test_cmd")
    generate(root / "data" / "synthetic", seed=0, n_train=8, n_test=4)
    assert train(root / "data", root / "runs", "--epochs", "1") == 0
    return root, root / "runs" / "res18" / "synthetic" / "default" / "fpn_1_1_3.pth"


@pytest.mark.slow
def test_end_to_end_outputs_and_same_map_as_voc_eval(trained, tmp_path, capsys):
    root, ckpt = trained
    capsys.readouterr()
    rc = main(["test", "--checkpoint", str(ckpt), "--data-dir", str(root / "data"), "--json", str(tmp_path / "ap.json"),
               "--vis", "2", "--bs", "3", "--no-progress", "--set", "model.score_thresh=0.0"])  # fmt: skip
    assert rc == 0
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[-1].startswith("mAP = ") and "voc07 11-point" in lines[-1]
    assert any(line.startswith("circle ") for line in lines)

    out = ckpt.parent / "test_synthetic"
    files = sorted(p.name for p in (out / "results").iterdir())
    assert files == sorted(f"comp4_det_test_{c}.txt" for c in SYNTH_CLASSES)
    report = json.loads((tmp_path / "ap.json").read_text())
    assert set(report) == {"metric", "ap", "map"} and set(report["ap"]) == set(SYNTH_CLASSES)
    assert f"{report['map']:.4f}" in lines[-1]
    assert (out / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "vis").glob("*.jpg"))) == 2

    dets = json.loads((out / "detections.json").read_text())
    assert dets["classes"] == list(SYNTH_CLASSES) and len(dets["images"]) == 4
    sizes = {}
    from PIL import Image

    for im in dets["images"]:
        with Image.open(im["image"]) as f:
            sizes[im["id"]] = f.size
    boxes = [(d["box"], sizes[im["id"]]) for im in dets["images"] for d in im["detections"]]
    assert len(boxes) == 400  # score threshold 0: 100 per image
    assert all(0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h for (x1, y1, x2, y2), (w, h) in boxes)
    assert max(b[0][2] for b in boxes) > 160  # original-image pixels (the network input is at most 160 wide)

    # fpn voc-eval on the written result files gives exactly the same numbers
    devkit = tmp_path / "devkit"
    devkit.mkdir()
    (devkit / "VOC2007").symlink_to(root / "data" / "synthetic")
    assert main(["voc-eval", "--devkit", str(devkit), "--results-dir", str(out / "results"),
                 "--json", str(tmp_path / "voc_eval.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "voc_eval.json").read_text()) == report



@pytest.mark.slow
def test_coco_metric_on_a_voc_dataset_writes_both_files_coco_eval_scores(trained, tmp_path, capsys):
    pytest.importorskip("faster_coco_eval")
    root, ckpt = trained
    out = tmp_path / "out"
    assert main(["test", "--checkpoint", str(ckpt), "--data-dir", str(root / "data"), "--output-dir", str(out),
                 "--metric", "coco", "--json", str(tmp_path / "test.json"), "--no-progress"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[-1].startswith("mAP = ") and "COCO AP@[.50:.95]" in lines[-1]
    gt = json.loads((out / "results" / "coco_gt.json").read_text())
    assert [c["name"] for c in gt["categories"]] == list(SYNTH_CLASSES) and len(gt["images"]) == 4
    assert main(["coco-eval", "--gt", str(out / "results" / "coco_gt.json"), "--results",
                 str(out / "results" / "coco_results.json"), "--json", str(tmp_path / "c.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "c.json").read_text()) == json.loads((tmp_path / "test.json").read_text())

def test_user_errors(trained, tmp_path, capsys):
    root, ckpt = trained
    other = torch.load(ckpt, map_location="cpu", weights_only=False)
    other["classes"] = ("cat", "dog")
    torch.save(other, tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_text("junk")
    data = ["--data-dir", str(root / "data"), "--output-dir", str(tmp_path / "out"), "--no-progress"]
    cases = [
        (["--checkpoint", str(tmp_path / "other.pth")], "checkpoint classes (2: cat, dog) differ from the dataset's"),
        (["--checkpoint", str(tmp_path / "junk.pth")], "junk.pth: not a readable checkpoint"),
        (["--checkpoint", str(tmp_path / "none.pth")], "none.pth: checkpoint file not found"),
        (["--checkpoint", str(ckpt), "--dataset", "pascal_voc"], "PASCAL VOC2007 not found"),
        (["--checkpoint", str(ckpt), "--bs", "0"], "--bs 0: must be at least 1"),
    ]
    for flags, message in cases:
        assert main(["test", *flags, *data]) == 2, flags
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (flags, err)
    assert not (tmp_path / "out").exists()


def test_out_of_memory_in_the_test_step_is_one_line(trained, tmp_path, monkeypatch, capsys):
    import fpn.engine.inference
    from fpn.engine.device import OUT_OF_MEMORY, cpu_bf16_support

    def oom(*args, **kwargs):
        raise OUT_OF_MEMORY[0]("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(fpn.engine.inference, "predict_records", oom)
    root, ckpt = trained
    capsys.readouterr()
    assert main(["test", "--checkpoint", str(ckpt), "--data-dir", str(root / "data"), "--bs", "8", "--amp", "none",
                 "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 4  # fmt: skip
    err = capsys.readouterr().err.strip()
    # the synthetic preset's test_max_size 368, the tiny run's test_scale 128
    # bf16 is suggested where this CPU computes it natively (--amp bf16 is refused elsewhere)
    fixes = ("a smaller --bs, smaller images (--set data.test_max_size=288 data.test_scale=96) or --amp bf16"
             if cpu_bf16_support()[0] else "a smaller --bs or smaller images (--set data.test_max_size=288 "
             "data.test_scale=96)")  # fmt: skip
    assert err == ("error: out of memory on cpu in the test step: batch 8, images up to 128 x 368 px (data.test_scale, "
                   f"data.test_max_size), precision fp32; try {fixes}")
    assert not (tmp_path / "out").exists()
