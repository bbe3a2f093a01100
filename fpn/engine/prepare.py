"""What a training run checks before its first iteration (beyond ``Config.validate``): training from scratch, the
stop signals; and seeded RNGs.

Everything here fails early, with a one-line UserError, before a run writes anything.
"""

from __future__ import annotations

import random
import signal

import numpy as np
import torch

from fpn.config import Config, SolverConfig
from fpn.errors import UserError


def stop_signals(solver: SolverConfig) -> tuple[signal.Signals, ...]:
    """The signals that stop a training run like a scheduler's notice (save, exit 75): SIGTERM, and
    ``solver.stop_signal`` (--stop-signal) when it names another (USR1 or USR2, with or without SIG)."""
    name = solver.stop_signal_name()
    stop_signal = solver.stop_signal
    extra = getattr(signal, f"SIG{name}", None) if name else None
    if name and extra is None:
        raise UserError(f"--stop-signal {stop_signal}: this system has no SIG{name}")
    return tuple(dict.fromkeys(s for s in (signal.SIGTERM, extra) if s is not None))


def check_from_scratch(cfg: Config, resuming: bool) -> None:
    """Refuse training a backbone from random weights with frozen BatchNorm: its statistics stay at their
    initial values, nothing normalises the activations and the loss diverges within a few iterations.
    Refused rather than switched to ``bn``: the norm changes the model (and its checkpoints), so it is the
    user's choice. Resuming or ``--init`` loads trained weights, statistics included: allowed."""
    m = cfg.model
    if resuming or m.init or m.pretrained != "none" or m.norm != "frozen_bn":
        return
    raise UserError(
        "--pretrained none with model.norm=frozen_bn: frozen BatchNorm keeps its initial statistics, so nothing "
        "normalises a randomly initialised backbone and the loss diverges; to train from scratch add "
        "--set model.norm=bn (or model.norm=gn for a few images per GPU), or start from weights "
        "(--pretrained imagenet or a .pth file, --init CHECKPOINT)"
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


