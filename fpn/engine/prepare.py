"""What a run needs before its first iteration: a checked config, seeded RNGs, the dataset and its records.

Everything here fails early, with a one-line UserError, before a run writes anything.
"""

from __future__ import annotations

import random
import re
import signal
from pathlib import Path
from typing import Collection

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


SYNTH_KEYS = ("synth_seed", "synth_train", "synth_test")  # DataConfig fields = the generator's parameters


def ensure_synthetic(cfg: Config, log=print, training: bool = False, asked: Collection[str] = ()) -> None:
    """Make sure ``{data_dir}/synthetic`` holds a complete synthetic dataset in the VOC layout.

    Nothing there, or an interrupted generation: it is generated with the config's ``synth_*`` parameters.
    A complete dataset is used as it is, whatever its parameters (``fpn synth --seed 311 --train 24`` made it:
    it is the user's). Only when ``training`` and ``asked`` (the config keys given on the command line) names
    a ``data.synth_*`` value the folder does not have is it regenerated, and the message says what it
    replaces. When training on a dataset with other parameters than the config's, the config's ``synth_*``
    fields take the folder's values, so config.json and the checkpoints name the data trained on, and a
    line says so. A COCO-only dataset gets the VOC layout added (the same images)."""
    from fpn.data import synthetic

    d = cfg.data
    root = Path(d.data_dir) / "synthetic"
    info = synthetic.read_marker(root)
    wanted = {k: getattr(d, k) for k in SYNTH_KEYS}
    if info is None:
        what = "regenerating the interrupted" if (root / synthetic.OWNER_MARKER).exists() else "generating the"
        log(f"{what} synthetic dataset in {root} ({_describe(wanted)}) ...")
        synthetic.generate(root, seed=d.synth_seed, n_train=d.synth_train, n_test=d.synth_test)
        return
    have = {"synth_seed": info.get("seed"), "synth_train": info.get("n_train"), "synth_test": info.get("n_test")}
    formats = tuple(dict.fromkeys(("voc", *synthetic.formats(root))))  # the VOC layout added, others kept
    differ = [k for k in SYNTH_KEYS if wanted[k] != have[k]]
    if training and any(f"data.{k}" in asked for k in differ):
        log(f"regenerating the synthetic dataset in {root} ({_describe(wanted)}, as --set "
            f"{' '.join(f'data.{k}={wanted[k]}' for k in differ if f'data.{k}' in asked)} asks); it held "
            f"{_describe(have)}")  # fmt: skip
        synthetic.generate(root, seed=d.synth_seed, n_train=d.synth_train, n_test=d.synth_test, formats=formats)
        return
    if differ and training:
        log(f"dataset synthetic: training on the complete dataset in {root} as it is: {_describe(have)} (the "
            f"config's: {_describe(wanted)}; --set {' '.join(f'data.{k}={wanted[k]}' for k in differ)} "
            "regenerates it)")  # fmt: skip
        for k in SYNTH_KEYS:
            setattr(d, k, have[k])
    if info.get("version") != synthetic.GENERATOR_VERSION:
        log(f"note: {root} was drawn by synthetic generator version {info.get('version')}, this fpn draws version "
            f"{synthetic.GENERATOR_VERSION}; `fpn synth --out {root}` with its parameters redraws it")  # fmt: skip
    if "voc" not in synthetic.formats(root):
        log(f"adding the VOC layout to the COCO-format synthetic dataset in {root} ({_describe(have)}) ...")
        synthetic.generate(root, seed=have["synth_seed"], n_train=have["synth_train"], n_test=have["synth_test"],
                           formats=formats)  # fmt: skip


def _describe(params: dict) -> str:
    return f"seed {params['synth_seed']}: {params['synth_train']} train + {params['synth_test']} test images"


def resolve(cfg: Config, generate: bool = True, log=print, classes_from: str = "train", training: bool = False,
            asked: Collection[str] = ()):  # fmt: skip
    """The dataset's ``DatasetSpec``; for ``synthetic`` the data is generated first when missing (for
    ``training``, regenerated when ``asked`` names other parameters: ``ensure_synthetic``). A dataset
    folder's layout is logged. ``classes_from``: the split whose COCO categories are the classes."""
    from fpn.data.catalog import resolve_dataset

    d = cfg.data
    if generate and d.dataset == "synthetic" and not (d.train_json or d.test_json):
        ensure_synthetic(cfg, log=log, training=training, asked=asked)
    spec = resolve_dataset(
        d.dataset, d.data_dir, train_json=d.train_json, train_images=d.train_images, test_json=d.test_json,
        test_images=d.test_images, classes_from=classes_from,
    )  # fmt: skip
    if spec.layout:
        log(f"dataset {spec.name}: {spec.layout}")
    return spec


def split_records(spec, which: str) -> list[dict]:
    """Records of the dataset's ``train`` or ``test`` splits; a UserError when it has none."""
    from fpn.data.catalog import load_records

    sets = spec.train_sets if which == "train" else spec.test_sets
    if not sets:
        raise UserError(f"dataset {spec.name} has no {which} split (give one with --set data.{which}_json=FILE)")
    return load_records(list(sets), spec.classes, category_ids=spec.category_ids or None)
