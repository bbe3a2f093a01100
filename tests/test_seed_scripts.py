"""The seed-compatible scripts at the repo root: flag mapping, and one tiny train -> test -> demo run."""

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fpn.data.synthetic import generate
from fpn.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"seed_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


trainval_net, test_net, demo = _script("trainval_net"), _script("test_net"), _script("demo")


def _train_argv(argv):
    return trainval_net.to_fpn_argv(trainval_net.build_parser().parse_args(argv))


def _flag(argv, flag):
    return argv[argv.index(flag) + 1]


def test_seed_readme_train_command_maps_onto_fpn_train():
    readme = ("exp_name --dataset pascal_voc --net res101 --bs 2 --num_workers 4 --lr 1e-3 --epochs 12 "
              "--save_dir weights --cuda --use_tfboard True")  # fmt: skip
    argv = _train_argv(shlex.split(readme))
    assert argv[0] == "train"
    expected = {"--dataset": "pascal_voc", "--net": "res101", "--exp-name": "exp_name", "--bs": "2", "--workers": "4",
                "--lr": "0.001", "--epochs": "12", "--save-dir": "weights", "--device": "cuda", "--session": "1"}
    assert {k: _flag(argv, k) for k in expected} == expected
    assert "--tensorboard" in argv and "--resume" not in argv and "--lr-decay-step" not in argv  # preset: after 10


def test_bools_parse_as_bools_and_nw_alias():
    assert "--no-tensorboard" in _train_argv(["e", "--use_tfboard", "False"])  # the seed turned this *on*
    assert "--no-tensorboard" in _train_argv(["e"])
    assert "--tensorboard" in _train_argv(["e", "--use_tfboard", "true"])
    assert "--tensorboard" in _train_argv(["e", "--use_tfboard"])
    assert _flag(_train_argv(["e", "--nw", "3"]), "--workers") == "3"
    assert _flag(_train_argv(["e", "--num_workers", "5"]), "--workers") == "5"
    with pytest.raises(SystemExit) as e:
        trainval_net.build_parser().parse_args(["e", "--r", "maybe"])
    assert e.value.code == 2


def test_decay_step_cag_gamma_and_errors():
    argv = _train_argv(["e", "--epochs", "12", "--lr_decay_step", "4", "--cag", "--lr_decay_gamma", "0.5"])
    assert argv[argv.index("--lr-decay-step") + 1 : argv.index("--lr-decay-step") + 3] == ["4", "8"]
    assert argv[argv.index("--set") + 1 :] == ["model.class_agnostic=True", "solver.lr_decay_gamma=0.5"]
    assert trainval_net.decay_epochs(10, 12) == [10]
    with pytest.raises(UserError, match="--o adam: only sgd is supported"):
        _train_argv(["e", "--o", "adam"])
    with pytest.raises(UserError, match="--start_epoch 3: only with --r True"):
        _train_argv(["e", "--start_epoch", "3"])


def test_checkpoint_paths(tmp_path):
    folder = tmp_path / "res101" / "pascal_voc" / "exp_name"
    folder.mkdir(parents=True)
    (folder / "fpn_1_7_5010.pth").write_bytes(b"")
    readme = (f"exp_name --dataset pascal_voc --net res101 --checksession 1 --checkepoch 7 --checkpoint 5010 "
              f"--cuda --load_dir {tmp_path}")  # fmt: skip
    argv = test_net.to_fpn_argv(test_net.build_parser().parse_args(shlex.split(readme)))
    assert argv[:3] == ["test", "--checkpoint", str(folder / "fpn_1_7_5010.pth")]
    assert _flag(argv, "--device") == "cuda" and "--soft-nms" not in argv

    resume = ["exp_name", "--save_dir", str(tmp_path), "--r", "True", "--checkpoint", "5010", "--checkepoch"]
    assert _flag(_train_argv([*resume, "7"]), "--resume") == str(folder / "fpn_1_7_5010.pth")
    with pytest.raises(UserError, match=r"fpn_1_8_5010.pth not found \(found: fpn_1_7_5010.pth\)"):
        _train_argv([*resume, "8"])
    # demo: without an exp_name, a unique experiment folder holding the checkpoint is found
    d = demo.to_fpn_argv(demo.build_parser().parse_args(
        ["--load_dir", str(tmp_path), "--checkepoch", "7", "--checkpoint", "5010", "--image_dir", "imgs"]))
    assert d[:4] == ["demo", "imgs", "--checkpoint", str(folder / "fpn_1_7_5010.pth")]
    assert _flag(d, "--out") == "imgs_det"


def test_mgpus_bs_is_the_total_batch_over_all_gpus(monkeypatch, capsys):
    args = trainval_net.build_parser().parse_args(["e", "--cuda", "--mGPUs", "--bs", "8"])
    assert _flag(trainval_net.to_fpn_argv(args, world_size=4), "--bs") == "2"  # 8 over 4 GPUs
    args.bs = None  # the preset's batch 2 is the total, too
    assert _flag(trainval_net.to_fpn_argv(args, world_size=2), "--bs") == "1"
    args.bs = 6
    with pytest.raises(UserError, match=r"^--bs 6 with --mGPUs: .* among the 4 GPUs \(e.g. --bs 4 or --bs 8\)$"):
        trainval_net.to_fpn_argv(args, world_size=4)
    plain = trainval_net.build_parser().parse_args(["e", "--bs", "6"])
    assert _flag(trainval_net.to_fpn_argv(plain, world_size=4), "--bs") == "6"  # without --mGPUs: as given
    # the process torchrun started: WORLD_SIZE tells it its share; a bad --bs is one line, exit 2
    ran = []
    monkeypatch.setattr(trainval_net, "run_fpn", lambda argv: ran.append(argv) or 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert trainval_net.main(["e", "--cuda", "--mGPUs", "--bs", "4", "--amp", "fp16"]) == 0
    assert _flag(ran[0], "--bs") == "2" and _flag(ran[0], "--amp") == "fp16"
    assert trainval_net.main(["e", "--cuda", "--mGPUs", "--bs", "3"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --bs 3 with --mGPUs: the total batch must divide evenly among the 2 GPUs (e.g. --bs 2 or --bs 4)"
    )
    # the launching process checks the division before it starts torchrun with one process per GPU
    import torch

    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    launched = []

    def execv(exe, cmd):  # exec does not return
        launched.append(cmd)
        raise SystemExit(0)

    monkeypatch.setattr(trainval_net.os, "execv", execv)
    assert trainval_net.main(["e", "--cuda", "--mGPUs", "--bs", "3"]) == 2 and not launched
    assert "--bs 3 with --mGPUs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        trainval_net.main(["e", "--cuda", "--mGPUs", "--bs", "4"])
    assert launched[0][3:5] == ["--standalone", "--nproc_per_node=2"] and launched[0][-2:] == ["--bs", "4"]


def test_torchrun_relaunch_command():
    cmd = trainval_net.torchrun_command("/repo/trainval_net.py", ["e", "--mGPUs", "--cuda"], 4)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "/repo/trainval_net.py",
                       "e", "--mGPUs", "--cuda"]  # fmt: skip


@pytest.mark.slow
def test_tiny_train_test_demo_through_the_seed_scripts(tmp_path, capsys):
    generate(tmp_path / "data" / "synthetic", seed=0, n_train=8, n_test=4)
    sets = ["data.synth_train=8", "data.synth_test=4", "data.train_scales=128", "data.test_scale=128",
            "data.max_size=160", "data.flip=False",
            "model.rpn_batch_per_image=64", "model.roi_batch_per_image=32", "eval_at_end=False"]  # fmt: skip
    common = ["--dataset", "synthetic", "--net", "res18", "--data_dir", str(tmp_path / "data")]
    rc = trainval_net.main(["tiny", *common, "--bs", "2", "--nw", "0", "--epochs", "1", "--save_dir",
                            str(tmp_path / "weights"), "--use_tfboard", "False", "--set", *sets])  # fmt: skip
    assert rc == 0
    run = tmp_path / "weights" / "res18" / "synthetic" / "tiny"
    assert [p.name for p in run.glob("*.pth")] == ["fpn_1_1_3.pth"] and not list(run.glob("events.*"))
    capsys.readouterr()
    rc = test_net.main(["tiny", *common, "--load_dir", str(tmp_path / "weights"), "--checksession", "1",
                        "--checkepoch", "1", "--checkpoint", "3", "--soft_nms", "--vis", "1"])  # fmt: skip
    assert rc == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("mAP = ")
    assert len(list((run / "test_synthetic" / "vis").glob("*.jpg"))) == 1
    images = tmp_path / "data" / "synthetic" / "JPEGImages"
    rc = demo.main(["tiny", "--dataset", "synthetic", "--net", "res18", "--load_dir", str(tmp_path / "weights"),
                    "--checkepoch", "1", "--checkpoint", "3", "--image_dir", str(images),
                    "--output_dir", str(tmp_path / "demo")])  # fmt: skip
    assert rc == 0
    assert len(json.loads((tmp_path / "demo" / "detections.json").read_text())["images"]) == 12
    assert test_net.main(["tiny", *common, "--load_dir", str(tmp_path / "weights"), "--checkepoch", "9"]) == 2
    assert "fpn_1_9_0.pth not found (found: fpn_1_1_3.pth)" in capsys.readouterr().err


@pytest.mark.slow
def test_scripts_run_as_programs():
    out = subprocess.run([sys.executable, str(ROOT / "trainval_net.py"), "e", "--o", "adam"], capture_output=True,
                         text=True, cwd=ROOT)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --o adam: only sgd is supported (momentum SGD, as the seed's recipe)"
