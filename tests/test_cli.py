"""The command line: every command and seed script defaults to ``--amp auto``, prints what it resolved to,
and an explicit ``--amp bf16`` on a device without native bf16 is a one-line error; ``--set`` lists end at
the first argument without ``=`` in every command that has one."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fpn import config as C
from fpn.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
NOT_NATIVE = "--amp bf16: CPU without native bf16, bf16 would be emulated and slow; use --amp auto or none (fp32)"


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    from fpn.engine import device

    monkeypatch.setattr(device, "cpu_bf16_support", lambda: (False, "CPU without native bf16"))


def _seed_script(name):
    spec = importlib.util.spec_from_file_location(f"seed_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _commands(tmp_path):
    ckpt = tmp_path / "weights" / "res18" / "synthetic" / "e" / "fpn_1_1_0.pth"  # found by the seed scripts
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    images = tmp_path / "weights" / "images"
    images.mkdir()
    Image.new("RGB", (32, 24)).save(images / "a.jpg")
    seed = ["e", "--dataset", "synthetic", "--net", "res18", "--checkepoch", "1"]  # on the CPU (no --cuda)
    return {
        "fpn train": (main, ["train", "--dataset", "synthetic", "--data-dir", str(tmp_path / "data"),
                             "--save-dir", str(tmp_path / "runs"), "--device", "cpu"]),
        "fpn test": (main, ["test", "--checkpoint", str(ckpt), "--device", "cpu"]),
        "fpn demo": (main, ["demo", str(images), "--checkpoint", str(ckpt), "--out", str(tmp_path / "demo"),
                            "--device", "cpu"]),
        "fpn bench": (main, ["bench", "--net", "res18", "--mode", "train", "--device", "cpu"]),
        "trainval_net.py": (_seed_script("trainval_net"), [*seed, "--data_dir", str(tmp_path / "data"),
                                                           "--save_dir", str(tmp_path / "runs")]),
        "test_net.py": (_seed_script("test_net"), [*seed, "--load_dir", str(tmp_path / "weights")]),
        "demo.py": (_seed_script("demo"), [*seed, "--load_dir", str(tmp_path / "weights"),
                                           "--image_dir", str(images), "--output_dir", str(tmp_path / "demo")]),
    }  # fmt: skip


def test_explicit_bf16_without_native_support_is_one_line_everywhere(tmp_path, cpu_without_bf16, capsys):
    for name, (run, argv) in _commands(tmp_path).items():
        assert run([*argv, "--amp", "bf16"]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err == f"error: {NOT_NATIVE}", (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]  # nothing generated or written


def test_auto_is_the_default_and_printed_once(tmp_path, cpu_without_bf16, capsys):
    commands = _commands(tmp_path)
    for name in ("fpn test", "fpn demo", "test_net.py", "demo.py"):  # they stop after it: a broken checkpoint
        run, argv = commands[name]
        assert run(argv) == 2
        out, err = capsys.readouterr()
        assert out.splitlines() == ["precision: fp32 (CPU without native bf16)"], name
        assert "not a readable checkpoint" in err, name


@pytest.mark.slow
def test_avx2_only_cpu_picks_fp32_and_refuses_bf16(tmp_path):
    """The real probe in a fresh process: torch capped at AVX2 kernels (as on an AVX2-only CPU)."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    missing = str(tmp_path / "missing.pth")
    for amp, code in (("auto", 2), ("bf16", 2)):
        out = subprocess.run([sys.executable, "-m", "fpn", "test", "--checkpoint", missing, "--device", "cpu",
                              "--amp", amp], capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
        assert out.returncode == code
        if amp == "auto":
            assert out.stdout.startswith("precision: fp32 (") and "checkpoint file not found" in out.stderr
        else:
            err = out.stderr.strip()
            assert err.startswith("error: --amp bf16: ") and err.endswith("use --amp auto or none (fp32)")
            assert "\n" not in err and not out.stdout


def _subcommand(command):
    (action,) = build_parser(command)._subparsers._group_actions
    return action.choices[command]


def test_set_is_one_shared_flag_repeatable_and_never_takes_a_positional_argument():
    with_set = [c for c in COMMANDS if "--set" in _subcommand(c)._option_string_actions]
    assert {"train", "test", "demo", "export", "bench", "convert"} <= set(with_set)
    required = {"test": ["--checkpoint", "c"], "export": ["--checkpoint", "c", "--out", "o"]}
    for command in ("train", "test", "export", "bench"):  # no positional arguments: one --set may take several
        argv = [command, *required.get(command, []), "--set", "a.b=1", "c.d=[1, 2]", "--set", "e=f"]
        args = build_parser(command).parse_args(argv)
        assert args.overrides == ["a.b=1", "c.d=[1, 2]", "e=f"], command
    # with positional arguments each --set takes one KEY=VALUE, so the images after it stay images
    demo = build_parser("demo")
    args = demo.parse_args(["demo", "--checkpoint", "c.pth", "--set", "data.test_scale=208", "img1.jpg", "img2.jpg",
                            "--set", "model.nms_thresh=0.4", "--out", "o"])  # fmt: skip
    assert (args.images, args.overrides, args.out) == (["img1.jpg", "img2.jpg"],
                                                       ["data.test_scale=208", "model.nms_thresh=0.4"], "o")  # fmt: skip
    trainval = _seed_script("trainval_net").__globals__["build_parser"]()
    args = trainval.parse_args(["--set", "solver.lr=0.1", "--bs", "4"])
    assert (args.set_cfgs, args.bs) == (["solver.lr=0.1"], 4)


def test_device_and_amp_mean_the_same_in_every_command():
    for command in ("train", "test", "demo", "bench"):
        parser = _subcommand(command)
        amp, device = parser._option_string_actions["--amp"], parser._option_string_actions["--device"]
        assert tuple(amp.choices) == C.AMP_MODES and amp.default is None and amp.nargs is None, command
        assert device.default is None, command


def test_a_set_without_key_value_is_a_usage_error(capsys):
    assert main(["demo", "--checkpoint", "c.pth", "--out", "o", "--set", "img1.jpg"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: argument --set: expected KEY=VALUE, e.g. model.backbone=res50, got 'img1.jpg' "
                   "(fpn demo --help lists the flags)\n")  # one line, as every other mistake
    assert main(["train", "--dataset", "synthetic", "--set", "a=1", "stray"]) == 2
    assert "got 'stray'" in capsys.readouterr().err


def test_train_help_names_every_kind_of_dataset():
    text = " ".join(_subcommand("train").format_help().split())
    assert ("--dataset DATASET pascal_voc, pascal_voc_0712, synthetic, coco, or a dataset folder (VOC layout or COCO "
            "JSON)") in text  # fmt: skip
