#!/usr/bin/env python3
"""The seed's training script: its command lines keep working; it maps the flags onto ``fpn train``.

    python3 trainval_net.py exp_name --dataset pascal_voc --net res101 --bs 2 --num_workers 4 --lr 1e-3 \\
        --epochs 12 --save_dir weights --cuda --use_tfboard True

Checkpoints: ``{save_dir}/{net}/{dataset}/{exp_name}/fpn_{s}_{epoch}_{step}.pth`` (step = index of an
epoch's last iteration). ``--epochs 12`` trains 12 epochs; ``--lr_decay_step N`` decays the rate by
``--lr_decay_gamma`` after every N epochs (after epoch 10 for N=10, 12 epochs). ``--r True`` resumes from
``fpn_{checksession}_{checkepoch}_{checkpoint}.pth`` in the same folder. ``--mGPUs`` re-runs itself under
``torchrun`` with one process per visible GPU; ``--bs`` is then, as in the seed, the total batch over all
GPUs (it must divide evenly; each process gets ``--bs / GPUs``) and ``--lr`` the rate for that total batch
(the default ``solver.lr_scaling=none``). Without ``--cuda`` it runs on the CPU. Unflagged values come from the
dataset's preset (``fpn.config``). Extensions: ``--amp`` (default auto), ``--cfg FILE`` and
``--set key=value ...`` as in ``fpn train``.
"""

from __future__ import annotations

import argparse
import os
import sys

from fpn.engine.distributed import env_world_size
from fpn.seed_scripts import (
    add_amp,
    add_bool,
    device_flag,
    fail,
    per_process_batch,
    run_fpn,
    seed_checkpoint,
    torchrun_command,
)
from fpn.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a Feature Pyramid Network (seed-compatible flags)")
    p.add_argument("exp_name", nargs="?", default="default", help="experiment name (run folder)")
    p.add_argument("--dataset", default="pascal_voc", help="pascal_voc | pascal_voc_0712 | synthetic | folder")
    p.add_argument("--net", default="res101", help="res18 | res34 | res50 | res101 | res152")
    p.add_argument("--start_epoch", type=int, default=1, help="starting epoch (from the checkpoint with --r)")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs to train (preset: 12)")
    p.add_argument("--disp_interval", type=int, default=100, help="iterations between log lines")
    p.add_argument("--checkpoint_interval", type=int, default=None, help="accepted; checkpoints follow epochs")
    p.add_argument("--save_dir", default="weights", help="directory to save models")
    p.add_argument("--nw", "--num_workers", dest="num_workers", type=int, default=None, help="data loader workers")
    p.add_argument("--cuda", action="store_true", help="use CUDA")
    p.add_argument("--mGPUs", action="store_true", help="use all visible GPUs (torchrun, one process each)")
    p.add_argument("--bs", type=int, default=None, help="batch size (with --mGPUs: the total over all GPUs)")
    p.add_argument("--cag", action="store_true", help="class-agnostic box regression")
    p.add_argument("--o", dest="optimizer", default="sgd", help="training optimizer: sgd")
    p.add_argument("--lr", type=float, default=None, help="starting learning rate (preset: 1e-3)")
    p.add_argument("--lr_decay_step", type=int, default=None, help="decay the rate every N epochs (preset: after 10)")
    p.add_argument("--lr_decay_gamma", type=float, default=None, help="learning rate decay ratio (preset: 0.1)")
    p.add_argument("--s", dest="session", type=int, default=1, help="training session")
    add_bool(p, "--r", dest="resume", help="resume from the --checksession/--checkepoch/--checkpoint checkpoint")
    p.add_argument("--checksession", type=int, default=1, help="checksession to load model")
    p.add_argument("--checkepoch", type=int, default=1, help="checkepoch to load model")
    p.add_argument("--checkpoint", type=int, default=0, help="checkpoint (step) to load model")
    add_bool(p, "--use_tfboard", help="write TensorBoard scalars")
    p.add_argument("--data_dir", default="data", help="folder holding VOCdevkit2007/, synthetic/ ...")
    add_amp(p)
    p.add_argument("--cfg", dest="cfg_file", default=None, help="config.json to start from (extension)")
    p.add_argument("--set", dest="set_cfgs", nargs="+", action="extend", default=[], help="key=value overrides")
    return p


def decay_epochs(step: int, epochs: int) -> list[int]:
    """Every ``step`` epochs while epochs remain: (10,) for step 10 of 12 epochs, (4, 8) for 4 of 12."""
    if step < 1:
        raise UserError(f"--lr_decay_step {step}: must be at least 1")
    return list(range(step, epochs, step)) or [step]


def to_fpn_argv(args: argparse.Namespace, world_size: int = 1) -> list[str]:
    """The ``fpn train`` command line equivalent to the seed flags, for one of ``world_size`` processes
    (``--mGPUs``: the total ``--bs`` is divided among them)."""
    if args.optimizer.lower() != "sgd":
        raise UserError(f"--o {args.optimizer}: only sgd is supported (momentum SGD, as the seed's recipe)")
    argv = ["train", "--dataset", args.dataset, "--net", args.net, "--exp-name", args.exp_name,
            "--save-dir", args.save_dir, "--data-dir", args.data_dir, "--session", str(args.session),
            "--log-interval", str(args.disp_interval), "--device", device_flag(args.cuda)]  # fmt: skip
    if args.resume:
        path = seed_checkpoint(args.save_dir, args.net, args.dataset, args.exp_name,
                               args.checksession, args.checkepoch, args.checkpoint)  # fmt: skip
        argv += ["--resume", str(path)]
    elif args.start_epoch != 1:
        raise UserError(f"--start_epoch {args.start_epoch}: only with --r True (then the checkpoint's epoch follows)")
    if args.cfg_file:
        argv += ["--config", args.cfg_file]
    bs = args.bs
    if args.mGPUs:
        total = bs if bs is not None else _preset(args).solver.batch_size
        bs = per_process_batch(total, world_size)
    numbers = (("--bs", bs), ("--lr", args.lr), ("--epochs", args.epochs), ("--workers", args.num_workers),
               ("--amp", args.amp))  # fmt: skip
    for flag, value in numbers:
        if value is not None:
            argv += [flag, str(value)]
    if args.lr_decay_step is not None:
        epochs = args.epochs if args.epochs is not None else _preset(args).solver.epochs
        argv += ["--lr-decay-step", *map(str, decay_epochs(args.lr_decay_step, epochs))]
    argv.append("--tensorboard" if args.use_tfboard else "--no-tensorboard")
    sets = []
    if args.cag:
        sets.append("model.class_agnostic=True")
    if args.lr_decay_gamma is not None:
        sets.append(f"solver.lr_decay_gamma={args.lr_decay_gamma}")
    sets += args.set_cfgs
    if sets:
        argv += ["--set", *sets]
    return argv


def _preset(args: argparse.Namespace):
    from fpn import config as C

    if args.cfg_file:
        return C.load_json(args.cfg_file)
    return C.preset_for_dataset(args.dataset)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        world_size = env_world_size()
        if args.mGPUs and "WORLD_SIZE" not in os.environ:
            if not args.cuda:
                raise UserError("--mGPUs: needs --cuda (one process per GPU)")
            import torch

            n = torch.cuda.device_count()
            if n > 1:
                to_fpn_argv(args, n)  # a --bs that does not divide among the GPUs fails here, before torchrun
                cmd = torchrun_command(os.path.abspath(__file__), argv, n)
                print("running: " + " ".join(cmd), file=sys.stderr, flush=True)
                os.execv(cmd[0], cmd)
            print(f"note: --mGPUs with {n} visible GPU: training in one process", file=sys.stderr)
        fpn_argv = to_fpn_argv(args, world_size)
    except UserError as e:
        return fail(str(e))
    return run_fpn(fpn_argv)


if __name__ == "__main__":
    sys.exit(main())
