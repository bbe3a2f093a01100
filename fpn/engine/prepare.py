"""What a run needs before its first iteration: a checked config, seeded RNGs, the dataset and its records.

Everything here fails early, with a one-line UserError, before a run writes anything.
"""

from __future__ import annotations

import random
from pathlib import Path

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
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    return cfg


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def ensure_synthetic(cfg: Config, log=print, exact: bool = False) -> None:
    """Generate ``{data_dir}/synthetic`` with the config's ``synth_*`` parameters unless a complete one (VOC
    layout) is there. ``exact`` (training): it must have exactly those parameters, another seed or size is
    regenerated, so ``--set data.synth_seed=N`` trains on seed N's images; without it (testing a checkpoint)
    any complete one is used."""
    from fpn.data import synthetic

    d = cfg.data
    root = Path(d.data_dir) / "synthetic"
    found = synthetic.formats(root)
    if "voc" in found and (not exact or synthetic.matches(root, d.synth_seed, d.synth_train, d.synth_test, found)):
        return
    what = "regenerating" if found else "generating"
    log(f"{what} the synthetic dataset in {root} (seed {d.synth_seed}: {d.synth_train} train + {d.synth_test} "
        "test images) ...")
    synthetic.generate(root, seed=d.synth_seed, n_train=d.synth_train, n_test=d.synth_test)


def resolve(cfg: Config, generate: bool = True, log=print, classes_from: str = "train", exact: bool = False):
    """The dataset's ``DatasetSpec``; for ``synthetic`` the data is generated first when missing (or, with
    ``exact``, when it has other parameters: ``ensure_synthetic``). A dataset folder's layout is logged.
    ``classes_from``: the split whose COCO categories are the classes."""
    from fpn.data.catalog import resolve_dataset

    d = cfg.data
    if generate and d.dataset == "synthetic" and not (d.train_json or d.test_json):
        ensure_synthetic(cfg, log=log, exact=exact)
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
