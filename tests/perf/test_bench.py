import json
import re

import pytest
import torch

from fpn.perf.bench import bench_config, bench_latency, build_ours, make_input, make_train_step, match_detections
from fpn.perf.weights import BenchModels, build_torchvision, pretrain_torchvision
from fpn.cli import main
from fpn.perf.images import resize_samples, synthetic_samples
from fpn.engine.step import TrainStep

TINY = ["--net", "res18", "--scale", "64", "--max-size", "96", "--iters", "1", "--warmup", "0", "--device", "cpu",
        "--amp", "none"]  # fmt: skip


@pytest.fixture(scope="module")
def trained_tv_weights(tmp_path_factory):
    """A torchvision R18-FPN trained 20 iterations on synthetic images (lr 1e-3, scale 64): it detects things."""
    samples = resize_samples(synthetic_samples(8), (160, 120))
    torch.manual_seed(0)
    tv = build_torchvision("res18", 64, 96, num_classes=21)
    info = pretrain_torchvision(tv, samples, 20, 2, torch.device("cpu"), "none", 64, 96)
    assert info["last_loss"] < info["first_loss"]
    path = tmp_path_factory.mktemp("tv") / "tv_r18.pth"
    torch.save(tv.state_dict(), path)
    return path


def _check_ratios(res: dict, printed: str) -> None:
    """Every ours / torchvision ratio, recomputed from the two runs' median ms per iteration (the same batch: the
    images/s divide as the inverse ms), and the ratio the bench printed."""
    whats = {k.split("/", 1)[1] for k in res if k.startswith("ours/")}
    assert whats and {k.split("/", 1)[1] for k in res if k.startswith("ratio/")} == whats  # one per run both timed
    for what in whats:
        ours, tv, batch = res[f"ours/{what}"], res[f"torchvision/{what}"], int(what.rsplit("_bs", 1)[1])
        for r in (ours, tv):
            assert r["images_per_s"] == pytest.approx(batch * 1e3 / r["ms_per_iter"])
        ratio = tv["ms_per_iter"] / ours["ms_per_iter"]
        assert res[f"ratio/{what}"] == pytest.approx(ratio)
        shown = re.search(rf"ours / torchvision, {what}: ([0-9.]+)x", printed)
        assert shown and float(shown[1]) == pytest.approx(ratio, abs=0.0051), (what, ratio, printed)


def test_bench_input_is_resized_like_the_loader():
    samples = resize_samples(synthetic_samples(2), (500, 375))
    cfg = bench_config("voc07_res101")
    inp = make_input(samples, 2, cfg, 600, 1000, torch.device("cpu"))
    assert inp.images.shape == (2, 3, 608, 800)  # 375x500 -> 600x800, padded to multiples of 32
    assert inp.image_sizes == [(600, 800), (600, 800)]
    torch.testing.assert_close(inp.targets[0]["boxes"], inp.original_targets[0]["boxes"] * 1.6)
    torch.testing.assert_close(inp.originals[1], samples[1]["image"].float() / 255)
    assert inp.images[0, :, :600, :800].abs().mean() < 3  # normalised (ImageNet mean/std), not 0..255


@pytest.mark.slow
def test_same_weights_detect_and_agree_with_torchvision(trained_tv_weights, tmp_path, capsys):
    """The issue's acceptance: `fpn bench --mode infer --compare torchvision --weights W` runs both models on W,
    both detect, and their detections agree."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--mode", "infer", "--compare", "torchvision", "--weights", str(trained_tv_weights),
                 "--bs", "2", "--image-size", "160x120", *TINY, "--json", str(out)]) == 0  # fmt: skip
    res = json.loads(out.read_text())
    assert res["weights"]["kind"] == "torchvision state dict" and res["config"]["net"] == "res18"
    for key in ("ours/infer_bs1", "ours/infer_bs2", "torchvision/infer_bs1", "torchvision/infer_bs2"):
        r = res[key]
        assert r["representative"] and "note" not in r
        assert min(r["detections_per_image"]) > 0 and min(r["proposals_per_image"]) > 0
    assert res["ours/infer_bs2"]["detections_per_image"] == res["torchvision/infer_bs2"]["detections_per_image"]
    a = res["agreement"]
    assert a["ok"] and a["matched"] == a["detections"][0] == a["detections"][1] > 0 and a["labels_equal"], a
    assert a["unmatched"] == [0, 0] and a["unmatched_confident"] == 0 and a["tf32"] is False
    assert a["max_box_px"] < 1e-2 and a["max_score"] < 1e-4
    assert res["latency_bs1"]["ours"]["detections"] == res["latency_bs1"]["torchvision"]["detections"] > 0
    printed = capsys.readouterr().out
    _check_ratios(res, printed)
    assert "weights: torchvision state dict" in printed and ": agree" in printed and "NOT REPRESENTATIVE" not in printed


@pytest.mark.slow
def test_bench_cli_runs_every_mode_on_cpu_and_compares(tmp_path, capsys):
    """Without pretraining (--pretrain-iters 0) every mode runs, with the profile's host syncs."""
    out, saved = tmp_path / "bench.json", tmp_path / "tv.pth"
    rc = main(["bench", "--bs", "2", "--mode", "all", "--compare", "torchvision", "--pretrain-iters", "0",
               "--images", "4", "--workers", "0", "--profile", "--save-weights", str(saved), *TINY,
               "--json", str(out)])  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["weights"]["kind"].startswith("torchvision, pretrained here")
    assert res["weights"]["pretrain"]["iterations"] == 0
    assert set(torch.load(saved)) == set(build_torchvision("res18", 64, 96).state_dict())
    latency = res["latency_bs1"]
    assert set(latency) == {"ours", "torchvision"}
    assert all(r["ms"] > 0 and r["iters"] == 1 and r["precision"] == "fp32" for r in latency.values())
    assert latency["ours"]["vs_torchvision"] == pytest.approx(latency["torchvision"]["ms"] / latency["ours"]["ms"])
    for key in ("ours/train_bs2", "ours/infer_bs1", "ours/infer_bs2", "torchvision/train_bs2", "torchvision/infer_bs2"):
        r = res[key]
        assert r["images_per_s"] > 0 and r["gflop_per_image"] > 0
        assert len(r["detections_per_image"]) == len(r["proposals_per_image"]) == int(key[-1])
        assert r["representative"] == (sum(r["detections_per_image"]) > 0) and r["host_syncs"]["per_iter"] >= 0
        ops = r["aten_ops"]  # one iteration's operations: a training step runs the backward too
        assert ops["ops"] > 100 and ops["views"] > 0 and ops["top"][0][1] >= ops["top"][-1][1] > 0
    assert res["ours/train_bs2"]["aten_ops"]["ops"] > res["ours/infer_bs2"]["aten_ops"]["ops"]
    # the host syncs of torchvision's inference: its per-level NMS and pooling, by source line
    assert any(site.startswith("torchvision/") for site in res["torchvision/infer_bs2"]["host_syncs"]["sites"])
    assert res["data"]["images"] == 8 - 2  # 4 images + mirrors, the first batch of 2 untimed
    printed = capsys.readouterr().out
    _check_ratios(res, printed)  # train_bs2, infer_bs1, infer_bs2
    assert "ours / torchvision, train_bs2" in printed and "data loader:" in printed and "host syncs:" in printed
    assert f"aten ops per iteration: {res['ours/train_bs2']['aten_ops']['ops']} (+" in printed
    assert "batch-1 latency" in printed and "torchvision's speed" in printed


@pytest.mark.slow
def test_a_model_that_detects_nothing_is_flagged_not_representative(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--mode", "infer", "--bs", "2", *TINY, "--set", "model.score_thresh=1.0", "--json",
                 str(out)]) == 0  # fmt: skip
    res = json.loads(out.read_text())
    assert res["weights"]["kind"] == "random"
    for key in ("ours/infer_bs1", "ours/infer_bs2"):
        assert res[key]["detections_per_image"] == [0] * int(key[-1]) and not res[key]["representative"]
        assert res[key]["note"].startswith("NOT REPRESENTATIVE") and min(res[key]["proposals_per_image"]) > 0
    assert res["latency_bs1"]["ours"]["detections"] == 0 and "NOT REPRESENTATIVE" in res["latency_bs1"]["ours"]["note"]
    printed = capsys.readouterr().out
    flagged = "ours/infer_bs1, ours/infer_bs2, latency ours: NOT REPRESENTATIVE: the model returns no detections"
    assert flagged in printed


@pytest.mark.parametrize("argv, message", [
    (["--net", "res7"], "argument --net: invalid choice: 'res7'"),
    (["--bs", "0"], "--bs 0: must be at least 1"),
    (["--amp", "fp8"], "argument --amp: invalid choice: 'fp8'"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--weights", "missing.pth"], "--weights missing.pth: no such file"),
    (["--image-dir", "no_such_dir"], "--image-dir no_such_dir: no such folder"),
    (["--pretrain-iters", "-1"], "--pretrain-iters -1: must not be negative"),
])
def test_bench_bad_flags(argv, message, capsys):
    assert main(["bench", "--mode", "infer", "--iters", "1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_fpn_checkpoint_weights_time_ours_but_cannot_be_compared(tiny_checkpoint, capsys):
    assert main(["bench", "--mode", "infer", "--weights", str(tiny_checkpoint), "--compare", "torchvision", *TINY]) == 2
    err = capsys.readouterr().err
    assert "an fpn checkpoint; --compare torchvision needs a torchvision Faster R-CNN state dict" in err


@pytest.mark.slow
def test_bench_train_times_the_trainers_step_for_a_preset(tmp_path, monkeypatch):
    calls = []
    real_call = TrainStep.__call__
    monkeypatch.setattr(TrainStep, "__call__", lambda self, *a: calls.append(self) or real_call(self, *a))
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "synthetic", "--scale", "64", "--max-size", "96", "--bs", "2", "--mode", "train",
                 "--iters", "2", "--warmup", "1", "--device", "cpu", "--amp", "none", "--json", str(out),
                 "--set", "model.nms_impl=offset"]) == 0  # fmt: skip
    res = json.loads(out.read_text())
    c = res["config"]
    assert (c["preset"], c["net"], c["backbone_width"], c["fpn_channels"], c["batch"], c["scale"]) == (
        "synthetic", "res18", 32, 64, 2, 64)  # the preset's network, with the flags' batch and scale
    assert c["channels_last"] and c["optimizer"] == "adamw" and c["precision"] == "fp32 (asked for)"
    assert c["nms_impl"] == "offset" and res["weights"]["kind"] == "random"
    assert res["ours/train_bs2"]["optimizer"] == "AdamW (fused)"  # build_optimizer's choice, as in training
    assert len(calls) == 1 + 1 + 2  # the FLOP count, warm-up and timed iterations: all the trainer's step
    assert calls[0].amp == "none" and calls[0].scheduler is not None


def test_bench_step_under_fp16_uses_the_unfused_sgd_the_trainer_would():
    cfg = bench_config("voc07_res101", net="res18", amp="fp16")
    step = make_train_step(build_ours(cfg), cfg, "fp16", torch.device("cpu"), iters=3)
    assert isinstance(step, TrainStep) and step.scaler.is_enabled() and not step.optimizer.defaults.get("fused")


@pytest.mark.slow
def test_bench_latency_times_the_onnx_model_in_turn(tiny_onnx, monkeypatch):
    """``--onnx``: the exported model joins the interleaved rounds (the export itself is replaced by the
    session's tiny ONNX file, which is tested elsewhere)."""
    import fpn.export

    monkeypatch.setattr(fpn.export, "export_onnx", lambda *args, **kwargs: tiny_onnx)
    cfg = bench_config("voc07_res101", net="res18", scale=64, max_size=96)
    models = BenchModels(build_ours(cfg), cfg, [f"class{i}" for i in range(1, 21)])
    image = synthetic_samples(1)[0]["image"]
    res = bench_latency(models, image, torch.device("cpu"), "none", True, warmup=0, iters=2)
    assert set(res) == {"ours", "ours_onnx"} and res["ours_onnx"]["iters"] == 2 and res["ours_onnx"]["ms"] > 0
    assert "vs_torchvision" not in res["ours"]


def _dets(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}  # fmt: skip


def test_agreement_matches_by_iou_and_label_whatever_the_order_and_the_count_at_the_threshold():
    """Two near-equal scores in swapped order, a detection of ours just above the threshold that torchvision's
    rounding put under it: they agree, with the spread reported. A confident detection on one side only, or a label
    that differs, does not match."""
    ref = _dets([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 70]], [0.30, 0.31, 0.9], [1, 2, 3])
    ours = _dets([[20.2, 20, 40, 40], [0, 0, 10, 10.1], [50, 50, 60, 70], [5, 60, 15, 80]], [0.312, 0.30, 0.9, 0.051],
                 [2, 1, 3, 4])  # fmt: skip
    m = match_detections(ours, ref, score_thresh=0.05)
    assert (m["matched"], m["unmatched"], m["unmatched_confident"]) == (3, [1, 0], 0)
    assert m["max_box_px"] == pytest.approx(0.2, abs=1e-6) and m["median_box_px"] == pytest.approx(0.1, abs=1e-6)
    assert m["max_score"] == pytest.approx(0.002, abs=1e-6) and m["median_score"] == pytest.approx(0.0, abs=1e-6)
    ours["scores"][3] = 0.5  # no longer at the threshold: torchvision missed a confident detection
    assert match_detections(ours, ref, 0.05)["unmatched_confident"] == 1
    ours["labels"][2] = 5  # same box, another class: not the same detection
    m = match_detections(ours, ref, 0.05)
    assert m["matched"] == 2 and m["unmatched"] == [2, 1] and m["unmatched_confident"] == 3
    empty = _dets(torch.zeros(0, 4).tolist(), [], [])
    assert match_detections(empty, ref, 0.05)["unmatched"] == [0, 3]
