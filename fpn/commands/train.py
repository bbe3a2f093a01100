"""``fpn train``: train a detector.

The config is built in layers, each overriding the one before:

1. the dataset's preset (``fpn.config.preset_for_dataset``; ``--preset`` names another), or, with
   ``--resume`` and no ``--config``, the checkpoint's own config;
2. ``--config FILE`` (a ``config.json`` saved by an earlier run);
3. the flags (``--net``, ``--bs``, ``--lr``, ``--init`` ...);
4. ``--set section.field=value`` overrides, in order.

The resolved config is saved as ``config.json`` in the run folder ``{save_dir}/{net}/{dataset}/{exp_name}/``.
"""

from __future__ import annotations

import argparse

from fpn import config as C
from fpn.engine.checkpoint import has_training_state, load_checkpoint
from fpn.engine.device import AMP_MODES
from fpn.engine.prepare import NETS
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
    "amp": ("solver", "amp"),
    "save_dir": (None, "save_dir"),
    "exp_name": (None, "exp_name"),
    "device": (None, "device"),
    "seed": (None, "seed"),
    "log_interval": (None, "log_interval"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="pascal_voc | pascal_voc_0712 | synthetic | path of a VOC-layout folder "
                   "(default: the --config's or --resume checkpoint's dataset)")  # fmt: skip
    p.add_argument("--net", help=f"backbone: {', '.join(NETS)} (preset: res101 for VOC, res18 for synthetic)")
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
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--amp", nargs="?", const="bf16", metavar="|".join(AMP_MODES),
                   help="mixed precision (default: the preset's, auto: bf16 where the device has it natively, else "
                   "fp32 on a CPU, fp16 with a GradScaler on an older GPU); bare --amp means bf16")  # fmt: skip
    p.add_argument("--seed", type=int, help="random seed (data order, initialisation, sampling)")
    p.add_argument("--log-interval", type=int, help="iterations between console/metrics lines")
    p.add_argument("--pretrained", metavar="NAME|PATH|none", help="backbone weights: imagenet, none or a .pth file")
    p.add_argument("--preset", help=f"start from this preset instead of the dataset's ({', '.join(C.PRESETS)})")
    p.add_argument("--config", metavar="FILE", help="start from this config.json (e.g. from an earlier run)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override config fields, e.g. --set model.fpn_channels=128 solver.warmup_iters=0")  # fmt: skip
    p.add_argument("--resume", metavar="PATH", help="continue training from this checkpoint")
    p.add_argument("--init", metavar="CKPT", help="start from all weights of this detection checkpoint (e.g. from fpn "
                   "convert); box-predictor rows of classes with the same name (or a VOC/COCO alias) are kept, "
                   "new classes start fresh")  # fmt: skip
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="write TensorBoard scalars into the run folder (default: on)")  # fmt: skip
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show progress bars (on a terminal; default: on)")  # fmt: skip


def resolve_config(args: argparse.Namespace) -> tuple[C.Config, tuple | None]:
    """(config, resume) from the flags; ``resume`` is (path, checkpoint dict) or None. See module docstring."""
    resume = None
    if args.resume:
        if args.init:
            raise UserError("--init: cannot be combined with --resume (a resumed run has its weights)")
        resume = (args.resume, load_checkpoint(args.resume, flag="--resume"))
        if not has_training_state(resume[1]):
            raise UserError(f"--resume {args.resume}: holds weights only (no optimiser state, e.g. from fpn convert); "
                            "start a new training from it with --init")  # fmt: skip
    if args.config:
        cfg = C.load_json(args.config)
    elif resume is not None:
        cfg = C.from_dict(resume[1]["config"])
    elif args.preset:
        cfg = C.get_preset(args.preset)
    elif args.dataset:
        cfg = C.preset_for_dataset(args.dataset)
    else:
        raise UserError("--dataset is required (pascal_voc, pascal_voc_0712, synthetic or a VOC-layout folder)")
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


def run(args: argparse.Namespace) -> int:
    from fpn.engine.trainer import train

    cfg, resume = resolve_config(args)
    session = args.session
    if session is None:
        session = int(resume[1]["session"]) if resume is not None else 1
    result = train(cfg, session=session, resume=resume, tensorboard=args.tensorboard, progress=args.progress)
    return 130 if result.interrupted else 0
