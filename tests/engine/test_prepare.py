import signal

import pytest

from fpn import config as C
from fpn.engine.prepare import check_from_scratch, stop_signals
from fpn.errors import UserError


def interval(every: str) -> tuple[int, float]:
    return C.SolverConfig(checkpoint_every=every).checkpoint_interval()


def signals(name: str):
    return stop_signals(C.SolverConfig(stop_signal=name))


def test_checkpoint_interval_and_stop_signal():
    assert interval("") == interval("0") == (0, 0.0)
    assert interval("500") == (500, 0.0)
    assert interval("30m") == (0, 1800.0) and interval("1.5h") == (0, 5400.0)
    assert interval("90s") == (0, 90.0)
    for bad in ("-5", "2.5", "30 min", "0m", "m"):
        with pytest.raises(UserError, match=f"solver.checkpoint_every={bad}: expected a number of iterations"):
            interval(bad)
        with pytest.raises(UserError, match=f"solver.checkpoint_every={bad}: expected a number of iterations"):
            C.SolverConfig(checkpoint_every=bad).validate()  # checked with the rest of the section
    assert signals("") == signals("TERM") == (signal.SIGTERM,)
    assert signals("usr1") == signals("SIGUSR1") == (signal.SIGTERM, signal.SIGUSR1)
    with pytest.raises(UserError, match="--stop-signal KILL: choose one of TERM, USR1, USR2"):
        signals("KILL")


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
