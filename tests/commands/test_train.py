"""``fpn train`` end to end on a tiny synthetic set (8 train images at scale 128, res18, CPU)."""

import argparse
import json
import math
import shutil
import signal

import pytest
import torch

import fpn.model
from fpn import config as C
from fpn.cli import main
from fpn.commands import train as train_cmd
from fpn.data.synthetic import SYNTH_CLASSES, generate
from fpn.checkpoint import load_checkpoint
from fpn.engine.device import OUT_OF_MEMORY
from fpn.engine.step import TrainStep
from fpn.errors import UserError
from tiny_run import train

# SGD with a step decay: its schedule does not depend on --epochs, so 1 epoch + 1 resumed == 2 epochs
SGD = ("eval_at_end=False", "solver.optimizer=sgd", "solver.lr_schedule=step", "solver.lr=0.02")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    generate(d / "synthetic", seed=0, n_train=8, n_test=4)
    return d


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
    """The last checkpoint of an uninterrupted 2-epoch SGD run: what interrupted and resumed runs must end with."""
    save = tmp_path_factory.mktemp("straight")
    assert train(data_dir, save, "--epochs", "2", "--exp-name", "straight", sets=SGD) == 0
    return load(run_folder(save, "straight") / "fpn_1_2_3.pth")


def run_folder(save_dir, exp="default"):
    return save_dir / "res18" / "synthetic" / exp


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def patch_forward(monkeypatch, at_call, action, before=False):
    """Wrap build_detector so the model's ``at_call``-th training forward returns ``action(losses)``
    (or, with ``before``, calls ``action(at_call)`` instead of the forward)."""
    real = fpn.model.build_detector

    def build(cfg, num_classes, **kw):
        model = real(cfg, num_classes, **kw)
        forward, calls = model.forward, [0]

        def patched(*args, **kwargs):
            if model.training:
                calls[0] += 1
                if calls[0] == at_call:
                    return action(at_call) if before else action(forward(*args, **kwargs))
            return forward(*args, **kwargs)

        model.forward = patched
        return model

    monkeypatch.setattr(fpn.model, "build_detector", build)


@pytest.mark.slow
def test_train_writes_run_folder_metrics_tensorboard_checkpoint_and_map(tmp_path, capsys):
    # no data yet: the synthetic set is generated first; the synthetic preset evaluates at the end
    data_dir = tmp_path / "data"
    assert train(data_dir, tmp_path, "--epochs", "1", sets=("data.synth_train=8", "data.synth_test=4")) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"generating the synthetic dataset in {data_dir / 'synthetic'} (seed 0: 8 train + 4 test images)")
    assert "[epoch 1/1][iter 2/4] loss " in out and out.rstrip().splitlines()[-1].startswith("mAP = ")
    assert (data_dir / "synthetic" / "DONE").is_file()
    run = run_folder(tmp_path)
    cfg = C.load_json(run / "config.json")
    assert (cfg.model.backbone, cfg.data.train_scales, cfg.solver.batch_size) == ("res18", (128,), 2)
    assert cfg.data.workers == 0
    assert cfg.preset == "synthetic" and cfg.model.roi_batch_per_image == 32

    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if r["type"] == "train"]
    assert [(r["epoch"], r["step"], r["iter"]) for r in train_lines] == [(1, 2, 2), (1, 4, 4)]
    assert set(train_lines[0]["losses"]) == {"rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box"}
    assert train_lines[0]["loss"] == pytest.approx(sum(train_lines[0]["losses"].values()))
    # lr of the logged iteration 4 (0-based 3) of the preset's cosine over 4 iterations, base lr 2e-3
    assert train_lines[1]["lr"] == pytest.approx(2e-3 * (1 + math.cos(math.pi * 3 / 4)) / 2)
    assert train_lines[0]["time"] > 0
    assert lines[-1]["type"] == "eval" and lines[-1]["metric"] == "voc07" and 0.0 <= lines[-1]["map"] <= 1.0
    assert json.loads((run / "eval_test.json").read_text())["map"] == lines[-1]["map"]
    # scored from the VOC result files, as fpn test scores them: same batch and precision, same numbers
    written = sorted(p.name for p in (run / "results_test").iterdir())
    assert written == sorted(f"comp4_det_test_{c}.txt" for c in SYNTH_CLASSES)
    assert main(["test", "--checkpoint", str(run / "fpn_1_1_3.pth"), "--bs", str(cfg.solver.batch_size),
                 "--amp", cfg.runtime.amp, "--json", str(tmp_path / "test.json"), "--no-progress"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "test.json").read_text()) == json.loads((run / "eval_test.json").read_text())

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    assert {"loss/total", "loss/rpn_cls", "lr", "eval/mAP"} <= set(acc.Tags()["scalars"])

    assert sorted(p.name for p in run.glob("*.pth")) == ["fpn_1_1_3.pth"]
    ck = load(run / "fpn_1_1_3.pth")
    assert (ck["epoch"], ck["step"], ck["iteration"], ck["session"], ck["interrupted"]) == (1, 3, 4, 1, False)
    assert (ck["net"], ck["dataset"], ck["classes"], ck["version"]) == ("res18", "synthetic", SYNTH_CLASSES, 2)
    assert C.from_dict(ck["config"]) == cfg
    assert ck["scheduler"]["last_epoch"] == 4 and ck["scaler"] == {} and ck["optimizer"]["state"]


@pytest.mark.slow
def test_resume_at_epoch_end_and_mid_epoch_equals_straight_run(data_dir, straight, tmp_path, monkeypatch):
    sets = SGD
    # one epoch, then resume for the second
    assert train(data_dir, tmp_path, "--epochs", "1", "--exp-name", "split", sets=sets) == 0
    first = run_folder(tmp_path, "split") / "fpn_1_1_3.pth"
    assert train(data_dir, tmp_path, "--epochs", "2", "--exp-name", "split", "--resume", str(first), sets=sets) == 0
    resumed = load(run_folder(tmp_path, "split") / "fpn_1_2_3.pth")
    assert_same_state(straight["model"], resumed["model"])
    assert resumed["iteration"] == straight["iteration"] == 8
    for a, b in zip(straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])

    # a KeyboardInterrupt raised as the 3rd iteration starts: a checkpoint after 2 iterations
    def interrupt(call):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        patch_forward(m, 3, interrupt, before=True)
        assert train(data_dir, tmp_path, "--epochs", "2", "--exp-name", "ctrlc", sets=sets) == 130
    run = run_folder(tmp_path, "ctrlc")
    assert sorted(p.name for p in run.glob("*.pth")) == ["fpn_1_1_1.pth"]
    ck = load(run / "fpn_1_1_1.pth")
    assert (ck["epoch"], ck["step"], ck["iteration"], ck["interrupted"]) == (1, 1, 2, True)

    # resume mid-epoch; a real Ctrl-C (SIGINT) in its 4th iteration (epoch 2, step 2) stops after that iteration
    def sigint(losses):
        signal.raise_signal(signal.SIGINT)
        return losses

    with monkeypatch.context() as m:
        patch_forward(m, 4, sigint)
        assert train(data_dir, tmp_path, "--exp-name", "ctrlc", "--resume", str(run / "fpn_1_1_1.pth"), sets=sets) == 130
    ck = load(run / "fpn_1_2_1.pth")
    assert (ck["epoch"], ck["step"], ck["iteration"], ck["interrupted"]) == (2, 1, 6, True)
    assert train(data_dir, tmp_path, "--exp-name", "ctrlc", "--resume", str(run / "fpn_1_2_1.pth"), sets=sets) == 0
    assert_same_state(straight["model"], load(run / "fpn_1_2_3.pth")["model"])
    steps = [(r["epoch"], r["step"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert steps == [(1, 2), (1, 4), (2, 2), (2, 4)]  # every step logged once across the three processes


def metric_steps(run):
    return [(r["epoch"], r["step"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_sigterm_then_the_same_command_with_resume_auto_equals_straight_run(data_dir, straight, tmp_path, monkeypatch,
                                                                            capsys):  # fmt: skip
    def command(exp):  # what a requeued job reruns; a checkpoint every 3 iterations, 1 mid-epoch one kept
        return train(data_dir, tmp_path, "--epochs", "2", "--exp-name", exp, "--resume", "auto",
                     "--checkpoint-every", "3", sets=(*SGD, "solver.keep_checkpoints=1"))  # fmt: skip

    def sigterm(losses):
        signal.raise_signal(signal.SIGTERM)
        return losses

    with monkeypatch.context() as m:
        patch_forward(m, 6, sigterm)  # in iteration 6 = epoch 2, step 2: it stops after that iteration
        assert command("pre") == 75
    out = capsys.readouterr().out
    run = run_folder(tmp_path, "pre")
    assert f"--resume auto: no checkpoint in {run}; training from the start" in out
    # iteration 3: an interval checkpoint (step index 2), then the epoch end's, then the stop's; 1 mid-epoch kept
    assert f"saved {run / 'fpn_1_1_2.pth'}" in out and "removed fpn_1_1_2.pth" in out
    assert sorted(p.name for p in run.glob("*.pth")) == ["fpn_1_1_3.pth", "fpn_1_2_1.pth"]
    ck = load(run / "fpn_1_2_1.pth")
    assert (ck["epoch"], ck["step"], ck["iteration"], ck["interrupted"], ck["mid_epoch"]) == (2, 1, 6, True, True)

    # a copy whose newest checkpoint is truncated falls back to the one before, with a warning
    truncated = run_folder(tmp_path, "truncated")
    shutil.copytree(run, truncated)
    (truncated / "fpn_1_2_1.pth").write_bytes((run / "fpn_1_2_1.pth").read_bytes()[:4096])

    (run / ".fpn_1_2_2.pth.x1y2.tmp").write_bytes(b"half a checkpoint")  # its writing killed by a SIGKILL

    assert command("pre") == 0
    out = capsys.readouterr().out
    assert f"--resume auto: {run / 'fpn_1_2_1.pth'} (epoch 2, step 1, iteration 6)" in out
    assert "removed .fpn_1_2_2.pth.x1y2.tmp: an unfinished checkpoint of a killed run" in out
    assert not (run / ".fpn_1_2_2.pth.x1y2.tmp").exists()
    assert_same_state(straight["model"], load(run / "fpn_1_2_3.pth")["model"])
    assert metric_steps(run) == [(1, 2), (1, 4), (2, 2), (2, 4)]

    assert command("truncated") == 0
    captured = capsys.readouterr()
    assert f"warning: --resume auto: skipped {truncated / 'fpn_1_2_1.pth'}: not a readable checkpoint" in captured.err
    assert f"--resume auto: {truncated / 'fpn_1_1_3.pth'} (epoch 1, step 3, iteration 4)" in captured.out
    assert_same_state(straight["model"], load(truncated / "fpn_1_2_3.pth")["model"])
    # the copied run's line of iteration 6, logged after the checkpoint it resumed from, is not repeated
    assert metric_steps(truncated) == [(1, 2), (1, 4), (2, 2), (2, 4)]

    assert command("pre") == 0  # a finished run: nothing to do
    assert "all 2 epochs are done, nothing to train" in capsys.readouterr().out


@pytest.mark.slow
def test_out_of_memory_is_one_line_and_the_last_checkpoint_stays_loadable(data_dir, tmp_path, monkeypatch, capsys):
    def oom(call):
        raise OUT_OF_MEMORY[0]("CUDA out of memory. Tried to allocate 2.00 GiB")

    patch_forward(monkeypatch, 3, oom, before=True)
    assert train(data_dir, tmp_path, "--epochs", "1", "--checkpoint-every", "2") == 4
    err = capsys.readouterr().err.strip()
    last = run_folder(tmp_path) / "fpn_1_1_1.pth"
    assert err.startswith("error: out of memory on cpu in the training step (epoch 1, step 3): batch 2 per process, "
                          "images up to 128 x 160 px (data.train_scales, data.max_size), precision ")  # fmt: skip
    # auto precision: bf16 where the CPU has it natively, else fp32, where --amp bf16 would be refused: no third fix
    assert "try a smaller --bs or smaller images (--set data.max_size=128 data.train_scales=96)" in err
    assert err.endswith(f"; last checkpoint: {last}") and "\n" not in err
    ck = load_checkpoint(last)
    assert (ck["iteration"], ck["mid_epoch"], ck["interrupted"]) == (2, True, False)


def test_a_synthetic_dataset_the_user_made_is_trained_on_not_replaced(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data" / "synthetic"
    assert main(["synth", "--out", str(root), "--seed", "311", "--train", "24", "--test", "2"]) == 0
    done = (root / "DONE").read_text()
    capsys.readouterr()

    def stop(call):
        raise KeyboardInterrupt

    patch_forward(monkeypatch, 1, stop, before=True)  # the run is set up; no need to train
    assert main(["train", "--dataset", "synthetic", "--data-dir", str(tmp_path / "data"), "--save-dir",
                 str(tmp_path), "--bs", "2", "--workers", "0", "--no-progress", "--set", "eval_at_end=False",
                 "data.train_scales=128", "data.max_size=160"]) == 130  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith(
        f"dataset synthetic: training on the complete dataset in {root} as it is: seed 311: 24 train + 2 test images "
        "(the config's: seed 0: 6400 train + 300 test images; --set data.synth_seed=0 data.synth_train=6400 "
        "data.synth_test=300 regenerates it)\n"
    )
    assert (root / "DONE").read_text() == done and len(list((root / "JPEGImages").iterdir())) == 26
    # the config is left as given; the data the run trained on is recorded beside it
    cfg = C.load_json(run_folder(tmp_path) / "config.json")
    assert (cfg.data.synth_seed, cfg.data.synth_train, cfg.data.synth_test) == (0, 6400, 300)
    generator = json.loads((run_folder(tmp_path) / "run.json").read_text())["data_generator"]
    assert (generator["seed"], generator["n_train"], generator["n_test"]) == (311, 24, 2)


@pytest.mark.slow
def test_resume_restores_adamw_and_the_cosine_schedule(data_dir, tmp_path):
    # the synthetic preset: AdamW, cosine over all epochs; resuming the straight run's epoch-1 checkpoint
    assert train(data_dir, tmp_path, "--epochs", "2", "--exp-name", "straight") == 0
    run = run_folder(tmp_path, "straight")
    straight = load(run / "fpn_1_2_3.pth")
    assert set(straight["optimizer"]["state"][0]) >= {"exp_avg", "exp_avg_sq"}
    assert train(data_dir, tmp_path, "--exp-name", "again", "--resume", str(run / "fpn_1_1_3.pth")) == 0
    resumed = load(run_folder(tmp_path, "again") / "fpn_1_2_3.pth")
    assert_same_state(straight["model"], resumed["model"])
    for a, b in zip(straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


@pytest.mark.slow
def test_fp16_trains_with_sgd_its_scaler_state_resumes_and_a_precision_change_is_said(tmp_path, monkeypatch, capsys):
    data_dir = tmp_path / "data"  # 6 images: 3 full batches of 2 per epoch (fp16 is slow on a CPU)
    generate(data_dir / "synthetic", seed=0, n_train=6, n_test=2)
    calls = []
    real_call = TrainStep.__call__
    monkeypatch.setattr(TrainStep, "__call__", lambda self, *a: calls.append(1) or real_call(self, *a))
    sets = (*SGD, "data.train_scales=96", "data.max_size=128", "data.synth_train=6", "data.synth_test=2")  # fmt: skip
    assert train(data_dir, tmp_path, "--epochs", "1", "--amp", "fp16", sets=sets) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("train: 6 images (") and " objects (circle " in out[0]  # the split's counts first
    assert out[1] == "precision: fp16 (asked for; with a GradScaler in training)"
    # unfused SGD under the GradScaler; the preset's reference batch is 8, --bs 2 keeps --lr as given
    assert out[2].startswith("world size 1: batch 2 per process, 2 in total; SGD lr 0.02 (solver.lr as given")
    assert len(calls) == 3  # the trainer's iterations are TrainStep calls (fpn bench times the same)
    run = run_folder(tmp_path)
    first = load(run / "fpn_1_1_2.pth")
    # the precision is recorded beside the config (run.json, every checkpoint), never written into it
    assert first["precision"] == first["run"]["precision"] == "fp16" and "runtime" not in first["config"]
    assert json.loads((run / "run.json").read_text())["precision"] == "fp16"
    assert C.load_json(run / "config.json").runtime.amp == "fp16"  # what was asked for
    assert first["scaler"]["scale"] < 2.0**16  # the first fp16 steps overflowed and were skipped

    # resumed: the scaler goes on from its saved scale and growth tracker (a new one would be back at 0)
    assert train(data_dir, tmp_path, "--epochs", "2", "--resume", str(run / "fpn_1_1_2.pth"), sets=sets) == 0
    resumed = load(run / "fpn_1_2_2.pth")
    assert resumed["scaler"] == {**first["scaler"], "_growth_tracker": first["scaler"]["_growth_tracker"] + 3}
    assert all(torch.isfinite(v).all() for v in resumed["model"].values())
    assert "note:" not in capsys.readouterr().out

    # resumed in fp32: said once, the scaler state dropped, the new precision recorded
    assert train(data_dir, tmp_path, "--epochs", "2", "--exp-name", "fp32", "--amp", "none",
                 "--resume", str(run / "fpn_1_1_2.pth"), sets=sets) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out[1:3] == ["precision: fp32 (asked for)",
                       "note: the checkpoint trained in fp16; this run continues in fp32 (its GradScaler state is "
                       "not needed)"]  # fmt: skip
    fp32 = load(run_folder(tmp_path, "fp32") / "fpn_1_2_2.pth")
    assert fp32["scaler"] == {} and fp32["precision"] == "none"


@pytest.mark.slow
def test_non_finite_loss_stops_with_iteration_and_last_good_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    def nan(losses):
        return {**losses, "rcnn_cls": losses["rcnn_cls"] * float("nan")}

    patch_forward(monkeypatch, 6, nan)  # iteration 6 = epoch 2, step 2
    assert train(data_dir, tmp_path, "--epochs", "2") == 3
    err = capsys.readouterr().err.strip()
    last = run_folder(tmp_path) / "fpn_1_1_3.pth"
    assert err.startswith("error: non-finite loss at iteration 6 (epoch 2, step 2): rpn_cls=")
    assert "rcnn_cls=nan" in err and f"last good checkpoint: {last};" in err and "\n" not in err
    # from the config: the preset's lr for its batch of 4 at batch 2
    assert err.endswith("likely causes: solver.lr 0.002 is meant for a total batch of 4, not 2; else lower --lr or "
                        "raise solver.warmup_iters (now 2)")  # fmt: skip
    assert sorted(p.name for p in run_folder(tmp_path).glob("*.pth")) == ["fpn_1_1_3.pth"]


def test_user_errors_exit_2_with_one_line_and_write_nothing(data_dir, tmp_path, capsys):
    save = tmp_path / "runs"
    cases = [
        (["--net", "res9"], "error: argument --net: invalid choice: 'res9' (choose from 'res18', 'res34', 'res50', "
         "'res101', 'res152') (fpn train --help lists the flags)"),
        (["--dataset", "pascal_voc"], "error: PASCAL VOC2007 not found"),
        (["--dataset", "nope"], "error: unknown dataset 'nope'"),
        (["--resume", str(tmp_path / "missing.pth")], "checkpoint file not found"),
        (["--bs", "0"], "error: --bs 0: the batch size must be at least 1"),
        (["--set", "solver.nope=1"], "unknown config key"),
        (["--set", "solver.optimizer=adam"], "error: solver.optimizer adam: choose one of sgd, adamw"),
        (["--set", "solver.lr_schedule=poly"], "error: solver.lr_schedule poly: choose one of step, cosine"),
        (["--checkpoint-every", "5x"], "error: solver.checkpoint_every=5x: expected a number of iterations (500)"),
        (["--stop-signal", "HUP"], "error: --stop-signal HUP: choose one of TERM, USR1, USR2"),
        # the synthetic preset trains from scratch (pretrained none) with BatchNorm; frozen, it cannot
        (["--set", "model.norm=frozen_bn"], "error: --pretrained none with model.norm=frozen_bn: frozen BatchNorm "
         "keeps its initial statistics, so nothing normalises a randomly initialised backbone and the loss diverges; "
         "to train from scratch add --set model.norm=bn (or model.norm=gn"),
    ]
    for flags, message in cases:
        assert train(data_dir, save, *flags) == 2, flags
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (flags, err)
    assert not save.exists()


@pytest.mark.slow
def test_resume_checks_classes_and_existing_session(data_dir, tmp_path, capsys):
    assert train(data_dir, tmp_path, "--epochs", "1") == 0
    ckpt = run_folder(tmp_path) / "fpn_1_1_3.pth"
    capsys.readouterr()
    assert train(data_dir, tmp_path, "--epochs", "1") == 2  # would overwrite session 1
    assert "already holds checkpoints of session 1 (fpn_1_1_3.pth)" in capsys.readouterr().err

    other = load(ckpt)
    other["classes"] = ("cat", "dog")
    torch.save(other, tmp_path / "other.pth")
    assert train(data_dir, tmp_path, "--epochs", "2", "--resume", str(tmp_path / "other.pth")) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint classes (2: cat, dog) differ from the dataset's (8: circle" in err and "\n" not in err
    assert train(data_dir, tmp_path, "--epochs", "1", "--resume", str(ckpt)) == 2
    assert "has finished epoch 1 of 1; raise --epochs" in capsys.readouterr().err
    assert train(data_dir, tmp_path, "--epochs", "2", "--resume", str(ckpt), "--set", "solver.optimizer=sgd") == 2
    assert "was trained with solver.optimizer=adamw, not sgd" in capsys.readouterr().err
    assert train(data_dir, tmp_path, "--epochs", "2", "--net", "res50", "--resume", str(ckpt)) == 2
    assert "checkpoint is a res18 network, not res50" in capsys.readouterr().err


def _args(argv):
    p = argparse.ArgumentParser()
    train_cmd.add_arguments(p)
    return p.parse_args(argv)


def test_config_layers_preset_file_flags_set(tmp_path):
    cfg, resume = train_cmd.resolve_config(_args(["--dataset", "pascal_voc"]))
    assert resume is None and cfg == C.preset_for_dataset("pascal_voc")
    saved = C.get_preset("synthetic")
    saved.solver.lr, saved.solver.epochs = 0.5, 3
    C.save_json(saved, tmp_path / "config.json")
    cfg, _ = train_cmd.resolve_config(_args([
        "--config", str(tmp_path / "config.json"), "--epochs", "5", "--lr-decay-step", "2", "4", "--amp",
        "bf16", "--net", "res50", "--set", "solver.epochs=7", "model.fpn_channels=64",
    ]))  # fmt: skip
    assert cfg.solver.lr == 0.5  # from the file
    assert (cfg.model.backbone, cfg.solver.lr_decay_epochs, cfg.runtime.amp) == ("res50", (2, 4), "bf16")  # flags
    assert (cfg.solver.epochs, cfg.model.fpn_channels) == (7, 64)  # --set last
    assert cfg.data.dataset == "synthetic"
    with pytest.raises(UserError, match="--dataset is required"):
        train_cmd.resolve_config(_args([]))


def test_out_of_memory_in_the_evaluation_after_training_says_training_is_saved():
    from pathlib import Path

    from fpn.engine.device import Precision
    from fpn.engine.run import RunState
    from fpn.engine.trainer import TrainState

    cfg = C.get_preset("synthetic")
    last = Path("runs") / "fpn_1_2_3.pth"
    where = TrainState(epoch=3, step=0, iteration=8, last_checkpoint=last, evaluating=True)
    err = str(train_cmd.out_of_memory_error(cfg, RunState(torch.device("cpu"), Precision("none", "asked for"), where)))
    assert err.startswith(f"out of memory on cpu in the test step (the evaluation after training): batch "
                          f"{cfg.solver.batch_size}, images up to {cfg.data.test_scale} x ")  # fmt: skip
    assert err.endswith(f"; training is done and saved: fpn test --checkpoint {last} --bs 1 evaluates it")
    assert train_cmd.out_of_memory_error(cfg, RunState()) is None  # before training: fpn.cli's general line


def test_a_coco_run_without_a_metrics_engine_stops_before_its_first_step(tmp_path, monkeypatch, capsys):
    from fpn.evaluation import coco_eval

    data = generate(tmp_path / "shapes", seed=0, n_train=4, n_test=2, formats=("coco",))

    def missing(name="auto"):
        raise UserError(f"COCO metrics need faster-coco-eval or pycocotools: {coco_eval.INSTALL_HINT}")

    monkeypatch.setattr(coco_eval, "_engine", missing)
    steps = []
    monkeypatch.setattr(TrainStep, "__call__", lambda self, *a: steps.append(1))
    assert main(["train", "--dataset", str(data), "--preset", "synthetic", "--save-dir", str(tmp_path / "runs"),
                 "--bs", "2", "--workers", "0", "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("error: COCO metrics need faster-coco-eval or pycocotools") and err.count("\n") == 1
    assert steps == [] and not list((tmp_path / "runs").rglob("*.pth"))  # nothing trained, nothing written
