"""``fpn demo`` end to end on a tiny checkpoint."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from fpn.cli import main
from fpn.data.synthetic import generate
from tiny_run import train

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_cmd")
    generate(root / "data" / "synthetic", seed=0, n_train=4, n_test=3)
    assert train(root / "data", root / "runs", "--epochs", "1") == 0
    images = root / "images"
    images.mkdir()
    for i, name in enumerate(["a.jpg", "b.jpg"]):
        shutil.copy(root / "data" / "synthetic" / "JPEGImages" / f"00000{5 + i}.jpg", images / name)
    Image.open(images / "a.jpg").save(images / "c.png")
    (ckpt,) = (root / "runs" / "res18" / "synthetic" / "default").glob("fpn_1_1_*.pth")
    return ckpt, images


@pytest.mark.slow
def test_demo_draws_and_writes_json(trained, tmp_path, capsys):
    ckpt, images = trained
    # the images after a --set: with positional arguments each --set takes one KEY=VALUE
    rc = main(["demo", "--checkpoint", str(ckpt), "--set", "model.score_thresh=0.0", "--set", "model.detections_per_image=3",
               str(images), str(images / "a.jpg"), "--out", str(tmp_path / "o"), "--thresh", "0.0", "--no-progress"])
    assert rc == 0
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert written == ["a.jpg", "a_1.jpg", "b.jpg", "c.jpg", "detections.json"]
    info = json.loads((tmp_path / "o" / "detections.json").read_text())
    assert [im["output"] for im in info["images"]] == ["a.jpg", "b.jpg", "c.jpg", "a_1.jpg"]
    for im in info["images"]:
        assert len(im["detections"]) == 3 and {"class", "label", "score", "box"} == set(im["detections"][0])
        with Image.open(im["image"]) as src, Image.open(tmp_path / "o" / im["output"]) as drawn:
            assert src.size == drawn.size
            diff = np.abs(np.asarray(src.convert("RGB"), np.int16) - np.asarray(drawn, np.int16)).max(-1)
            assert (diff > 60).sum() > 50  # the boxes and labels were drawn
    assert "wrote 4 image(s) and detections.json" in capsys.readouterr().out

    assert main(["demo", str(images / "b.jpg"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "p"),
                 "--no-progress", "--thresh", "1.0"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "p" / "detections.json").read_text())["images"][0]["detections"] == []


def test_bad_inputs_one_line_exit_2(trained, tmp_path, capsys):
    ckpt, images = trained
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(tmp_path / "missing.jpg")], str(ckpt), "missing.jpg: image not found"),
        ([str(tmp_path / "bad.jpg")], str(ckpt), "bad.jpg: not a readable image"),
        ([str(tmp_path / "empty")], str(ckpt), "empty: folder holds no image files"),
        ([str(images)], str(tmp_path / "bad.jpg"), "bad.jpg: not a readable checkpoint"),
    ]
    for inputs, checkpoint, message in cases:
        assert main(["demo", *inputs, "--checkpoint", checkpoint, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_demo_runs_an_exported_model(tiny_onnx, tiny_checkpoint, tmp_path, capsys):
    """``--model model.onnx`` (onnxruntime) draws the detections the checkpoint gives in PyTorch."""
    from tiny_model import rectangles_image

    image = rectangles_image(100, 128, 160)[0]
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "r.png")
    for flag, model, out in (("--model", tiny_onnx, "onnx"), ("--checkpoint", tiny_checkpoint, "torch")):
        assert main(["demo", str(tmp_path / "r.png"), flag, str(model), "--out", str(tmp_path / out),
                     "--thresh", "0.3", "--no-progress", "--amp", "none"]) == 0  # fmt: skip
    onnx, torch = (json.loads((tmp_path / d / "detections.json").read_text()) for d in ("onnx", "torch"))
    assert onnx["model"] == str(tiny_onnx) and onnx["classes"] == torch["classes"] == ["red", "green", "blue"]
    a, b = onnx["images"][0]["detections"], torch["images"][0]["detections"]
    assert len(a) == len(b) >= 2 and [d["class"] for d in a] == [d["class"] for d in b]
    for x, y in zip(a, b):
        assert x["score"] == pytest.approx(y["score"], abs=1e-4) and x["box"] == pytest.approx(y["box"], abs=0.02)
    assert (tmp_path / "onnx" / "r.jpg").is_file()
    assert "onnxruntime" in capsys.readouterr().out
    assert main(["demo", str(tmp_path / "r.png"), "--model", str(tiny_onnx), "--out", str(tmp_path / "x"),
                 "--set", "model.nms_thresh=0.4"]) == 2  # fmt: skip
    assert "--set: applies to a --checkpoint" in capsys.readouterr().err


def test_unreadable_files_in_a_folder_are_skipped_each_said_once_and_the_rest_drawn(trained, tmp_path, capsys):
    ckpt, images = trained
    folder = tmp_path / "mixed"
    shutil.copytree(images, folder)
    (folder / "bad.jpg").write_bytes(b"not an image")  # fails the header check
    whole = (images / "a.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 3])  # a JPEG header, its data cut off: fails to decode
    rc = main(["demo", str(folder), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 0
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: ") and w.endswith("; skipped") for w in warnings)
    assert "bad.jpg: not a readable image" in warnings[0] and "cut.jpg" in warnings[1]
    drawn = sorted(p.name for p in (tmp_path / "o").glob("*.jpg"))
    assert drawn == ["a.jpg", "b.jpg", "c.jpg"]
    assert len(json.loads((tmp_path / "o" / "detections.json").read_text())["images"]) == 3
    out = captured.out.strip().splitlines()
    assert out[-1] == f"wrote 3 image(s) and detections.json to {tmp_path / 'o'}; skipped 2 unreadable file(s), named above"
    assert out[0].startswith("precision: ") and out[1] == f"model: {ckpt} on cpu"  # the precision said once
    assert sum(("bf16" in line or "fp32" in line) for line in out) == 1
