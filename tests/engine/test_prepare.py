import signal

import pytest

from fpn import config as C
from fpn.engine.prepare import check_from_scratch, checkpoint_interval, stop_signals
from fpn.errors import UserError


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
