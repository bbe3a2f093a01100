import json

import pytest
import torch

from fpn.benchmark import bench_config, build_ours, make_input, make_train_step
from fpn.cli import main
from fpn.engine.step import TrainStep


def test_bench_input_is_resized_like_the_loader():
    inp = make_input(2, (500, 375), 600, 1000, torch.device("cpu"))
    assert inp.images.shape == (2, 3, 608, 800)  # 375x500 -> 600x800, padded to multiples of 32
    assert inp.image_sizes == [(600, 800), (600, 800)]
    f = 600 / 375
    torch.testing.assert_close(inp.targets[0]["boxes"], inp.original_targets[0]["boxes"] * f)


def test_bench_cli_runs_every_mode_on_cpu_and_compares(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--net", "res18", "--bs", "2", "--scale", "64", "--max-size", "96", "--mode", "all",
               "--iters", "1", "--warmup", "0", "--compare", "torchvision", "--images", "4", "--workers", "0",
               "--device", "cpu", "--amp", "none", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    latency = res["latency_bs1"]
    agreement = latency.pop("agreement")  # ours with torchvision's weights computes torchvision's detections
    assert set(latency) == {"ours", "torchvision", "ours_tv_weights"}
    assert agreement["detections"] == [100, 100] and agreement["labels_equal"]
    assert agreement["max_box_px"] < 1e-3 and agreement["max_score"] < 1e-4
    assert all(r["ms"] > 0 and r["iters"] == 1 and r["precision"] == "fp32" for r in latency.values())
    assert latency["ours"]["vs_torchvision"] == pytest.approx(latency["torchvision"]["ms"] / latency["ours"]["ms"])
    for key in ("ours/train_bs2", "ours/infer_bs1", "ours/infer_bs2", "torchvision/train_bs2", "torchvision/infer_bs2"):
        assert res[key]["images_per_s"] > 0 and res[key]["gflop_per_image"] > 0
    ratio = res["ours/train_bs2"]["images_per_s"] / res["torchvision/train_bs2"]["images_per_s"]
    assert res["ratio/train_bs2"] == pytest.approx(ratio)
    assert res["data"]["images"] == 8 - 2  # 4 images + mirrors, the first batch of 2 untimed
    printed = capsys.readouterr().out
    assert "ours / torchvision, train_bs2" in printed and "data loader:" in printed
    assert "batch-1 latency" in printed and "torchvision's speed" in printed
    assert "ours with torchvision's weights vs torchvision (100 detections)" in printed


@pytest.mark.parametrize("argv, message", [
    (["--net", "res7"], "--net res7: unknown network"),
    (["--bs", "0"], "--bs 0: must be at least 1"),
    (["--amp", "fp8"], "--amp fp8"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
])
def test_bench_bad_flags(argv, message, capsys):
    assert main(["bench", "--mode", "infer", "--iters", "1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_bench_train_times_the_trainers_step_for_a_preset(tmp_path, monkeypatch):
    calls = []
    real_call = TrainStep.__call__
    monkeypatch.setattr(TrainStep, "__call__", lambda self, *a: calls.append(self) or real_call(self, *a))
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "synthetic", "--scale", "64", "--max-size", "96", "--bs", "2", "--mode", "train",
                 "--iters", "2", "--warmup", "1", "--device", "cpu", "--amp", "none", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    c = res["config"]
    assert (c["preset"], c["net"], c["backbone_width"], c["fpn_channels"], c["batch"], c["scale"]) == (
        "synthetic", "res18", 32, 64, 2, 64)  # the preset's network, with the flags' batch and scale
    assert c["channels_last"] and c["optimizer"] == "adamw" and c["precision"] == "fp32 (asked for)"
    assert res["ours/train_bs2"]["optimizer"] == "AdamW (fused)"  # build_optimizer's choice, as in training
    assert len(calls) == 1 + 1 + 2  # the FLOP count, warm-up and timed iterations: all the trainer's step
    assert calls[0].amp == "none" and calls[0].scheduler is not None


def test_bench_step_under_fp16_uses_the_unfused_sgd_the_trainer_would():
    cfg = bench_config("voc07_res101", net="res18", amp="fp16")
    step = make_train_step(build_ours(cfg), cfg, "fp16", torch.device("cpu"), iters=3)
    assert isinstance(step, TrainStep) and step.scaler.is_enabled() and not step.optimizer.defaults.get("fused")


def test_bench_latency_times_the_onnx_model_in_turn(tiny_onnx, monkeypatch):
    """``--onnx``: the exported model joins the interleaved rounds (the export itself is replaced by the
    session's tiny ONNX file, which is tested elsewhere)."""
    import fpn.engine.export

    from fpn.benchmark import bench_latency

    monkeypatch.setattr(fpn.engine.export, "export_onnx", lambda *args, **kwargs: tiny_onnx)
    cfg = bench_config("voc07_res101", net="res18", scale=64, max_size=96)
    res = bench_latency(cfg, (80, 60), torch.device("cpu"), "none", None, True, warmup=0, iters=2)
    assert set(res) == {"ours", "ours_onnx"} and res["ours_onnx"]["iters"] == 2 and res["ours_onnx"]["ms"] > 0
    assert "vs_torchvision" not in res["ours"]
