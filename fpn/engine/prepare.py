"""What a training run checks before its first iteration: the config, training from scratch, seeded RNGs.

Everything here fails early, with a one-line UserError, before a run writes anything.
"""

from __future__ import annotations

import random
import re
import signal

import numpy as np
import torch

from fpn.config import Config
from fpn.engine.device import check_amp
from fpn.engine.schedule import LR_SCALINGS, OPTIMIZERS, SCHEDULES
from fpn.errors import UserError

NETS = ("res18", "res34", "res50", "res101", "res152")


def check_config(cfg: Config) -> Config:
    """Range checks of the fields a training run reads; messages name the config key and its flag."""
    s, d, m = cfg.solver, cfg.data, cfg.model
    if m.backbone not in NETS:
        raise UserError(f"--net {m.backbone}: unknown network; choose one of {', '.join(NETS)}")
    check_amp(s.amp)
    checks = [
        (s.optimizer in OPTIMIZERS, f"solver.optimizer {s.optimizer}: choose one of {', '.join(OPTIMIZERS)}"),
        (s.lr_schedule in SCHEDULES, f"solver.lr_schedule {s.lr_schedule}: choose one of {', '.join(SCHEDULES)}"),
        (s.batch_size >= 1, f"--bs {s.batch_size}: the batch size must be at least 1"),
        (s.epochs >= 1, f"--epochs {s.epochs}: must be at least 1"),
        (s.lr > 0, f"--lr {s.lr}: the learning rate must be positive"),
        (s.lr_scaling in LR_SCALINGS, f"solver.lr_scaling {s.lr_scaling}: choose one of {', '.join(LR_SCALINGS)}"),
        (s.reference_batch >= 1, f"solver.reference_batch {s.reference_batch}: must be at least 1"),
        (d.workers >= 0, f"--workers {d.workers}: must be 0 or more"),
        (all(e >= 1 for e in s.lr_decay_epochs), f"--lr-decay-step {s.lr_decay_epochs}: epochs are 1-based"),
        (s.warmup_iters >= 0, f"solver.warmup_iters {s.warmup_iters}: must be 0 or more"),
        (s.momentum >= 0 and s.weight_decay >= 0, "solver.momentum and solver.weight_decay must be >= 0"),
        (cfg.log_interval >= 1, f"log_interval {cfg.log_interval}: must be at least 1"),
        (len(d.train_scales) >= 1 and min(d.train_scales) > 0, f"data.train_scales {d.train_scales}: must be > 0"),
        (s.keep_checkpoints >= 0, f"solver.keep_checkpoints {s.keep_checkpoints}: must be 0 (keep all) or more"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    checkpoint_interval(s.checkpoint_every)
    stop_signals(s.stop_signal)
    return cfg


_INTERVAL = re.compile(r"(\d+(?:\.\d+)?)([smh]?)")
_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def checkpoint_interval(every: str) -> tuple[int, float]:
    """``solver.checkpoint_every`` as (iterations, seconds), at most one of them non-zero: "" or "0" -> (0, 0),
    "500" -> (500, 0), "30m" -> (0, 1800), "2h", "90s"; a UserError naming the key otherwise."""
    text = str(every).strip().lower()
    if text in ("", "0"):
        return 0, 0.0
    m = _INTERVAL.fullmatch(text)
    if m is None or float(m.group(1)) <= 0 or (not m.group(2) and "." in m.group(1)):
        raise UserError(f"solver.checkpoint_every={every}: expected a number of iterations (500) or a time (90s, "
                        "30m, 2h)")  # fmt: skip
    if not m.group(2):
        return int(m.group(1)), 0.0
    return 0, float(m.group(1)) * _SECONDS[m.group(2)]


STOP_SIGNAL_NAMES = ("TERM", "USR1", "USR2")


def stop_signals(stop_signal: str) -> tuple[signal.Signals, ...]:
    """The signals that stop a training run like a scheduler's notice (save, exit 75): SIGTERM, and
    ``solver.stop_signal`` (--stop-signal) when it names another (USR1 or USR2, with or without SIG)."""
    name = str(stop_signal).strip().upper()
    name = name[3:] if name.startswith("SIG") else name
    if name and name not in STOP_SIGNAL_NAMES:
        raise UserError(f"--stop-signal {stop_signal}: choose one of {', '.join(STOP_SIGNAL_NAMES)}")
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


