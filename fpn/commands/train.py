"""``fpn train``: train a detector.

The config is built in layers, each overriding the one before:

1. the dataset's preset (``fpn.config.preset_for_dataset``; ``--preset`` names another), or, with
   ``--resume PATH`` and no ``--config``, the checkpoint's own config;
2. ``--config FILE`` (a ``config.json`` saved by an earlier run);
3. the flags (``--net``, ``--bs``, ``--lr``, ``--init`` ...);
4. ``--set section.field=value`` overrides, in order.

The resolved config is saved as ``config.json`` in the run folder ``{save_dir}/{net}/{dataset}/{exp_name}/``.

``--resume auto`` resolves the config as a new run would (so a requeued job runs the very command that
started it), then continues from the newest complete checkpoint of that run folder
(``fpn.checkpoint.newest_checkpoint``: a truncated newest file falls back to the one before, with a
warning), or starts fresh when there is none. Exit codes: 0 done, 2 a usage error, 3 a diverged loss,
4 out of memory, 75 stopped by SIGTERM / ``--stop-signal`` with the state saved (requeue and rerun), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys

from fpn import config as C
from fpn.checkpoint import (
    checkpoint_config,
    checkpoint_runtime,
    has_training_state,
    is_mid_epoch,
    load_checkpoint,
    newest_checkpoint,
    run_dir,
)
from fpn.commands import flags
from fpn.errors import UserError

# flag attribute -> (config section or None, field)
_FLAG_FIELDS = {
    "net": ("model", "backbone"),
    "data_dir": ("data", "data_dir"),
    "workers": ("data", "workers"),
    "pretrained": ("model", "pretrained"),
    "init": ("model", "init"),
    "bs": ("solver", "batch_size"),
    "lr": ("solver", "lr"),
    "epochs": ("solver", "epochs"),
    "lr_decay_step": ("solver", "lr_decay_epochs"),
    "amp": ("runtime", "amp"),
    "save_dir": (None, "save_dir"),
    "exp_name": (None, "exp_name"),
    "device": ("runtime", "device"),
    "seed": (None, "seed"),
    "log_interval": (None, "log_interval"),
    "checkpoint_every": ("solver", "checkpoint_every"),
    "stop_signal": ("solver", "stop_signal"),
}
DATASETS = "pascal_voc, pascal_voc_0712, synthetic, coco, or a dataset folder (VOC layout or COCO JSON)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help=f"{DATASETS} (default: the --config's or --resume checkpoint's dataset)")
    flags.add_net(p, "the preset's: res101 for VOC and COCO, res18 for synthetic")
    p.add_argument("--data-dir", help="folder holding VOCdevkit2007/..., synthetic/ (default: data)")
    p.add_argument("--save-dir", help="runs are written to SAVE_DIR/NET/DATASET/EXP_NAME/ (default: runs)")
    p.add_argument("--exp-name", help="experiment name, the run folder's last part (default: default)")
    p.add_argument("--session", type=int, default=None, help="session number in checkpoint names (default 1)")
    p.add_argument("--bs", type=int, help="images per batch per process (the total is --bs x processes)")
    p.add_argument("--lr", type=float, help="base learning rate")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--lr-decay-step", type=int, nargs="+", metavar="EPOCH",
                   help="multiply the learning rate by solver.lr_decay_gamma after each of these epochs")  # fmt: skip
    p.add_argument("--workers", type=int, help="data loader worker processes")
    flags.add_device(p)
    flags.add_amp(p)
    p.add_argument("--seed", type=int, help="RNG seed (data order, initialisation, sampling)")
    p.add_argument("--log-interval", type=int, help="iterations between console/metrics lines")
    p.add_argument("--pretrained", metavar="NAME|PATH|none", help="backbone weights: imagenet, none or a .pth file")
    p.add_argument("--preset", help=f"start from this preset instead of the dataset's ({', '.join(C.PRESETS)})")
    p.add_argument("--config", metavar="FILE", help="start from this config.json (e.g. from an earlier run)")
    flags.add_set(p, "model.fpn_channels=128 solver.warmup_iters=0")
    p.add_argument("--resume", metavar="PATH|auto", help="continue training from this checkpoint; auto: from the "
                   "newest complete checkpoint of the run folder, or from scratch when there is none (a requeued "
                   "job reruns the same command)")  # fmt: skip
    p.add_argument("--checkpoint-every", metavar="N|TIME", help="also checkpoint within epochs, every N iterations "
                   "(500) or every TIME (90s, 30m, 2h); the newest solver.keep_checkpoints (2) of those stay")
    p.add_argument("--stop-signal", metavar="USR1|USR2", help="this signal, like SIGTERM, stops training after the "
                   "current iteration, saves a checkpoint and exits with code 75 (e.g. SLURM --signal=B:USR1@120)")
    p.add_argument("--init", metavar="CKPT", help="start from all weights of this detection checkpoint (e.g. from fpn "
                   "convert); box-predictor rows of classes with the same name (or a VOC/COCO alias) are kept, "
                   "new classes start fresh")  # fmt: skip
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="write TensorBoard scalars into the run folder (default: on)")  # fmt: skip
    flags.add_progress(p)


def resolve_config(args: argparse.Namespace, log=print) -> tuple[C.Config, tuple | None]:
    """(config, resume) from the flags; ``resume`` is (path, checkpoint dict) or None. See module docstring."""
    resume = None
    if args.resume and args.init:
        raise UserError("--init: cannot be combined with --resume (a resumed run has its weights)")
    if args.resume == "auto":
        return _resume_auto(args, log)
    if args.resume:
        resume = (args.resume, load_checkpoint(args.resume, flag="--resume"))
        if not has_training_state(resume[1]):
            raise UserError(f"--resume {args.resume}: holds weights only (no optimiser state, e.g. from fpn convert); "
                            "start a new training from it with --init")  # fmt: skip
    if args.config:
        cfg = C.load_json(args.config)
    elif resume is not None:
        cfg = checkpoint_config(resume[1], resume[0])
        cfg.runtime = checkpoint_runtime(resume[1])  # resuming continues the run as it ran, unless flags say else
    elif args.preset:
        cfg = C.get_preset(args.preset)
    elif args.dataset:
        cfg = C.preset_for_dataset(args.dataset)
    else:
        raise UserError(f"--dataset is required ({DATASETS})")
    if args.preset and (args.config or resume is not None):
        raise UserError("--preset: cannot be combined with --config or --resume (they carry a whole config)")
    if args.dataset:
        cfg.data.dataset = args.dataset
    for attr, (section, name) in _FLAG_FIELDS.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        target = getattr(cfg, section) if section else cfg
        if attr == "lr_decay_step":
            value = tuple(value)
        setattr(target, name, value)
    C.apply_overrides(cfg, args.overrides)
    return cfg, resume


def _resume_auto(args: argparse.Namespace, log) -> tuple[C.Config, tuple | None]:
    """``--resume auto``: the config of a new run, and the newest complete checkpoint of its run folder (of
    ``--session`` when given), or None. One line says which it took (rank 0 under torchrun)."""
    fresh = argparse.Namespace(**{**vars(args), "resume": None})
    cfg, _ = resolve_config(fresh)
    folder = run_dir(cfg.save_dir, cfg.model.backbone, cfg.data.dataset, cfg.exp_name)
    found = newest_checkpoint(folder, args.session, warn=lambda line: log(f"warning: {line}", file=sys.stderr))
    if found is None:
        log(f"--resume auto: no checkpoint in {folder}; training from the start")
        return cfg, None
    path, ckpt = found
    ipe = (ckpt.get("run") or {}).get("iters_per_epoch")
    if ipe:  # the epochs a small dataset's run raised (solver.min_iters), as the run will raise them again
        from fpn.engine.schedule import small_dataset_epochs

        s = cfg.solver
        s.epochs, s.lr_decay_epochs = small_dataset_epochs(s.epochs, s.lr_decay_epochs, int(ipe), s.min_iters)
    log(f"--resume auto: {path} (epoch {ckpt['epoch']}, step {ckpt['step']}, iteration {ckpt['iteration']})"
        + (f": all {cfg.solver.epochs} epochs are done, nothing to train" if _finished(ckpt, cfg) else ""))  # fmt: skip
    differ = _differences(C.to_dict(cfg, runtime=False), C.to_dict(checkpoint_config(ckpt, path), runtime=False))
    if differ:
        log(f"note: this command's config differs from the checkpoint's in {', '.join(differ)} (the command's apply)")
    return cfg, (str(path), ckpt)


def _finished(ckpt: dict, cfg: C.Config) -> bool:
    return not is_mid_epoch(ckpt) and int(ckpt["epoch"]) >= cfg.solver.epochs


def _differences(now: dict, saved: dict, prefix: str = "") -> list[str]:
    """Config keys whose values differ between ``now`` and ``saved`` (``to_dict`` output)."""
    keys = []
    for key, value in now.items():
        name, old = f"{prefix}{key}", saved.get(key, value)
        if isinstance(value, dict) and isinstance(old, dict):
            keys += _differences(value, old, f"{name}.")
        elif _plain(value) != _plain(old):
            keys.append(name)
    return keys


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def _say(line: str, file=None) -> None:
    """Print on rank 0 only (torchrun starts one process per GPU, each resolving the command line)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=file or sys.stdout, flush=True)


def run(args: argparse.Namespace) -> int:
    from fpn.engine.device import OUT_OF_MEMORY
    from fpn.engine.run import RunState
    from fpn.engine.trainer import REQUEUE_EXIT_CODE, train

    cfg, resume = resolve_config(args, log=_say)
    if args.resume == "auto" and resume is not None and _finished(resume[1], cfg):
        return 0  # e.g. a requeued job whose training had finished
    session = args.session
    if session is None:
        session = int(resume[1]["session"]) if resume is not None else 1
    asked = [item.split("=", 1)[0].strip() for item in args.overrides]
    state = RunState()
    try:
        result = train(cfg, session=session, resume=resume, tensorboard=args.tensorboard, progress=args.progress,
                       asked=asked, state=state)  # fmt: skip
    except OUT_OF_MEMORY:
        error = out_of_memory_error(cfg, state)
        if error is None:  # before training started: fpn.cli's general message
            raise
        raise error from None
    if result.interrupted:
        return REQUEUE_EXIT_CODE if result.requeue else 130
    return 0


def out_of_memory_error(cfg: C.Config, state):
    """The one-line OutOfMemory error for a run that ran out of device memory where ``state`` (a
    ``fpn.engine.run.RunState``) says: a training step (its epoch and step, the batch, the image size, the
    precision, the last checkpoint) or the evaluation after training; None before training started."""
    from fpn.engine.device import out_of_memory, test_out_of_memory
    from fpn.engine.run import eval_batch

    where = state.trainer
    if where is None:
        return None
    if where.evaluating:
        return test_out_of_memory(state.device, "test step (the evaluation after training)", eval_batch(cfg), cfg.data,
                                  state.precision, then=f"; training is done and saved: fpn test --checkpoint "
                                  f"{where.last_checkpoint} --bs 1 evaluates it")  # fmt: skip
    d = cfg.data
    return out_of_memory(
        state.device, f"training step (epoch {where.epoch}, step {where.step + 1})",
        f"{cfg.solver.batch_size} per process", max(d.train_scales), d.max_size, state.precision,
        ("data.train_scales", "data.max_size"), then=f"; last checkpoint: {where.last_checkpoint or 'none yet'}",
    )  # fmt: skip
