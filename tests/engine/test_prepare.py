import signal

import pytest

from fpn import config as C
from fpn.data.synthetic import generate, matches
from fpn.engine.prepare import check_from_scratch, checkpoint_interval, ensure_synthetic, stop_signals
from fpn.errors import UserError


def test_ensure_synthetic_uses_what_is_there_and_regenerates_only_what_was_asked_for(tmp_path):
    cfg = C.get_preset("synthetic")
    cfg.data.data_dir, cfg.data.synth_train, cfg.data.synth_test = str(tmp_path), 4, 2
    said = []
    ensure_synthetic(cfg, log=said.append, training=True)
    root = tmp_path / "synthetic"
    assert matches(root, 0, 4, 2)
    assert said == [f"generating the synthetic dataset in {root} (seed 0: 4 train + 2 test images) ..."]
    ensure_synthetic(cfg, log=said.append, training=True)  # the same parameters: kept
    assert len(said) == 1

    cfg.data.synth_seed = 1  # another seed in the config (a preset, --config): the dataset there is used ...
    ensure_synthetic(cfg, log=said.append)  # ... silently for testing a checkpoint
    assert matches(root, 0, 4, 2) and len(said) == 1
    ensure_synthetic(cfg, log=said.append, training=True, asked=["data.synth_train"])  # ... and for training
    assert matches(root, 0, 4, 2) and cfg.data.synth_seed == 0  # the config names the data trained on
    assert said[-1] == (f"dataset synthetic: training on the complete dataset in {root} as it is: seed 0: 4 train + "
                        "2 test images (the config's: seed 1: 4 train + 2 test images; --set data.synth_seed=1 "
                        "regenerates it)")  # fmt: skip

    cfg.data.synth_seed = 1  # asked for on the command line (--set data.synth_seed=1): regenerated, and said
    ensure_synthetic(cfg, log=said.append, training=True, asked=["data.synth_seed"])
    assert matches(root, 1, 4, 2)
    assert said[-1] == (f"regenerating the synthetic dataset in {root} (seed 1: 4 train + 2 test images, as --set "
                        "data.synth_seed=1 asks); it held seed 0: 4 train + 2 test images")  # fmt: skip


def test_a_coco_only_synthetic_dataset_gets_the_voc_layout_added(tmp_path):
    root = tmp_path / "synthetic"
    generate(root, seed=3, n_train=2, n_test=1, formats=("coco",))
    cfg = C.get_preset("synthetic")
    cfg.data.data_dir = str(tmp_path)
    said = []
    ensure_synthetic(cfg, log=said.append, training=True)
    assert matches(root, 3, 2, 1, ("voc", "coco")) and (cfg.data.synth_seed, cfg.data.synth_train) == (3, 2)
    assert said[-1].startswith(f"adding the VOC layout to the COCO-format synthetic dataset in {root} (seed 3")


def test_checkpoint_interval_and_stop_signal():
    assert checkpoint_interval("") == checkpoint_interval("0") == (0, 0.0)
    assert checkpoint_interval("500") == (500, 0.0)
    assert checkpoint_interval("30m") == (0, 1800.0) and checkpoint_interval("1.5h") == (0, 5400.0)
    assert checkpoint_interval("90s") == (0, 90.0)
    for bad in ("-5", "2.5", "30 min", "0m", "m"):
        with pytest.raises(UserError, match=f"solver.checkpoint_every={bad}: expected a number of iterations"):
            checkpoint_interval(bad)
    assert stop_signals("") == stop_signals("TERM") == (signal.SIGTERM,)
    assert stop_signals("usr1") == stop_signals("SIGUSR1") == (signal.SIGTERM, signal.SIGUSR1)
    with pytest.raises(UserError, match="--stop-signal KILL: choose one of TERM, USR1, USR2"):
        stop_signals("KILL")


def test_training_from_scratch_with_frozen_batchnorm_is_refused():
    cfg = C.get_preset("voc07_res101")
    check_from_scratch(cfg, resuming=False)  # ImageNet weights: fine
    cfg.model.pretrained = "none"
    with pytest.raises(UserError, match=r"--pretrained none with model.norm=frozen_bn: .* --set model.norm=bn"):
        check_from_scratch(cfg, resuming=False)
    check_from_scratch(cfg, resuming=True)  # a checkpoint's weights and statistics
    cfg.model.init = "converted.pth"
    check_from_scratch(cfg, resuming=False)  # --init: a whole detector's weights
    cfg.model.init, cfg.model.norm = "", "gn"
    check_from_scratch(cfg, resuming=False)
