"""``fpn convert torchvision`` end to end: the checkpoint it writes loads in ``fpn test`` (zero-shot: the dataset's
classes are a subset of the model's), ``fpn demo`` and ``fpn train --init``; mistakes are one-line errors."""

import json

import pytest
import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from fpn import config as C
from fpn.cli import main
from fpn.data.synthetic import SYNTH_CLASSES, generate
from fpn.checkpoint import REQUIRED_KEYS, load_checkpoint
from tiny_run import train

# the torchvision model's slots 1..10: the synthetic classes, an unused slot and one more class
SLOTS = ("circle", "N/A", *SYNTH_CLASSES[1:], "kite")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, one_thread):
    """(root, converted checkpoint path) of a random torchvision res18-FPN Faster R-CNN."""
    root = tmp_path_factory.mktemp("convert")
    generate(root / "data" / "synthetic", seed=0, n_train=4, n_test=3)
    torch.manual_seed(0)
    model = FasterRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None), num_classes=len(SLOTS) + 1)
    torch.save(model.state_dict(), root / "tv.pth")
    (root / "classes.txt").write_text("\n".join(SLOTS) + "\n")
    out = root / "converted.pth"
    assert main(["convert", "torchvision", str(root / "tv.pth"), "--out", str(out), "--classes", str(root / "classes.txt"),
                 "--set", "data.test_scale=128", "--set", "data.max_size=160", "--set", "data.workers=0",
                 "--set", "model.score_thresh=0.0"]) == 0  # fmt: skip
    return root, out


def test_convert_writes_a_weights_checkpoint(converted, capsys):
    root, out = converted
    ckpt = load_checkpoint(out)
    assert set(REQUIRED_KEYS) <= set(ckpt) and "optimizer" not in ckpt
    assert ckpt["classes"] == (*SYNTH_CLASSES, "kite") and ckpt["net"] == "res18" and ckpt["dataset"] == "custom"
    cfg = C.from_dict(ckpt["config"])
    assert (cfg.preset, cfg.data.test_scale, cfg.model.pool_aligned) == ("torchvision", 128, False)
    assert cfg.model.pretrained == "none"  # the weights are the checkpoint's


@pytest.mark.slow
def test_converted_checkpoint_tests_zero_shot_and_demos(converted, tmp_path, capsys):
    root, out = converted
    capsys.readouterr()
    assert main(["test", "--checkpoint", str(out), "--dataset", "synthetic", "--data-dir", str(root / "data"),
                 "--output-dir", str(tmp_path / "test"), "--bs", "2", "--no-progress"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert "zero-shot: 8 of 8 classes matched from the checkpoint's 9 (circle, square, " in "\n".join(lines)
    assert lines[-1].startswith("mAP = ")
    detections = json.loads((tmp_path / "test" / "detections.json").read_text())
    assert detections["classes"] == list(SYNTH_CLASSES) and len(detections["images"]) == 3
    assert any(im["detections"] for im in detections["images"])
    image = root / "data" / "synthetic" / "JPEGImages" / "000005.jpg"
    assert main(["demo", str(image), "--checkpoint", str(out), "--out", str(tmp_path / "demo"), "--thresh", "0",
                 "--no-progress"]) == 0  # fmt: skip
    demo = json.loads((tmp_path / "demo" / "detections.json").read_text())
    assert demo["classes"] == [*SYNTH_CLASSES, "kite"] and demo["images"][0]["detections"]


@pytest.mark.slow
def test_train_init_from_the_converted_checkpoint(converted, tmp_path, capsys):
    root, out = converted
    config = tmp_path / "config.json"
    C.save_json(C.from_dict(load_checkpoint(out)["config"]), config)  # the converted model's architecture
    capsys.readouterr()
    assert train(root / "data", tmp_path / "runs", "--config", str(config), "--init", str(out), "--epochs", "1",
                 "--set", "solver.lr=1e-3") == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"--init {out}: 8 of 8 classes matched from the checkpoint's 9 (circle, square," in printed
    (ckpt,) = (tmp_path / "runs" / "res18" / "synthetic" / "default").glob("fpn_1_1_*.pth")
    saved = load_checkpoint(ckpt)
    assert C.from_dict(saved["config"]).model.init == str(out) and saved["classes"] == SYNTH_CLASSES


def test_mistakes_are_one_line_errors_and_write_nothing(converted, tmp_path, capsys):
    root, out = converted
    cases = [
        (["convert", "torchvision", str(tmp_path / "none.pth"), "--out", str(tmp_path / "x.pth")],
         "none.pth: no such file, and not a model name"),
        (["convert", "torchvision", str(root / "tv.pth"), "--out", str(tmp_path / "x.pth")],
         "the predictor has 11 class slots (background + 10); name them with --classes FILE"),
        (["convert", "torchvision", str(out), "--out", str(tmp_path / "x.pth")],
         "converted.pth: not a torchvision FasterRCNN(resnet_fpn_backbone) state dict"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not (tmp_path / "x.pth").exists()
    runs = tmp_path / "runs"
    for flags, message in [
        (["--resume", str(out)], "holds weights only (no optimiser state, e.g. from fpn convert); start a new training "
                                 "from it with --init"),
        (["--init", str(out)], f"--init {out}: its weights do not fit this model (backbone.conv1.weight is (64, 3, 7, 7) "
                               "in the checkpoint, (32, 3, 7, 7) here); it is a res18 model"),
        (["--init", str(out), "--resume", str(out)], "--init: cannot be combined with --resume"),
    ]:
        assert train(root / "data", runs, *flags) == 2, flags
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not runs.exists()
