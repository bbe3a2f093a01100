"""Helpers of the seed-compatible scripts (``trainval_net.py``, ``test_net.py``, ``demo.py`` at the repo root),
which map the seed's flags onto ``fpn train|test|demo``.

Fixed seed defects: booleans parse as booleans (``--use_tfboard False`` is off; the seed's ``type=bool``
made any value true), and ``--nw`` has the ``--num_workers`` alias its README uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fpn.checkpoint import checkpoint_name, run_dir
from fpn.errors import UserError

_TRUE = ("true", "t", "yes", "y", "1", "on")
_FALSE = ("false", "f", "no", "n", "0", "off")


def str2bool(value: str | bool) -> bool:
    """``True/False`` (any case), ``yes/no``, ``1/0``, ``on/off`` -> bool; an argparse error otherwise."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got '{value}'")


def add_bool(parser: argparse.ArgumentParser, *flags: str, default: bool = False, **kwargs) -> None:
    """A seed-style boolean flag: ``--flag True``, ``--flag False``, or bare ``--flag`` (= True)."""
    parser.add_argument(*flags, type=str2bool, nargs="?", const=True, default=default, metavar="True|False", **kwargs)


def seed_checkpoint(load_dir: str, net: str, dataset: str, exp_name: str | None, session: int, epoch: int,
                    step: int, flag: str = "--checksession/--checkepoch/--checkpoint") -> Path:  # fmt: skip
    """``{load_dir}/{net}/{dataset}/{exp_name}/fpn_{session}_{epoch}_{step}.pth``; UserError listing the
    checkpoints that do exist when it is missing. Without ``exp_name`` the seed's own layout (no exp folder)
    is tried first, then a unique match in any experiment folder."""
    name = checkpoint_name(session, epoch, step)
    if exp_name is not None:
        folder = run_dir(load_dir, net, dataset, exp_name)
        path = folder / name
        if path.is_file():
            return path
        raise UserError(f"{flag}: {path} not found{_available(folder)}")
    base = run_dir(load_dir, net, dataset, "x").parent
    if (base / name).is_file():
        return base / name
    matches = sorted(base.glob(f"*/{name}"))
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(m.parent.name for m in matches)
        raise UserError(f"{flag}: {name} exists for several experiments in {base} ({names}); name one")
    raise UserError(f"{flag}: {name} not found in {base} or its experiment folders")


def _available(folder: Path) -> str:
    found = sorted(p.name for p in folder.glob("fpn_*.pth")) if folder.is_dir() else []
    if not found:
        return f" (no checkpoints in {folder})" if folder.is_dir() else f" ({folder} does not exist)"
    shown = ", ".join(found[-6:])
    return f" (found: {shown})"


def add_amp(parser: argparse.ArgumentParser) -> None:
    """``--amp auto|none|bf16|fp16`` (an extension of the seed's flags), passed on to ``fpn`` when given."""
    from fpn.config import AMP_MODES

    parser.add_argument("--amp", default=None, choices=AMP_MODES,
                        help="mixed precision (default: the recipe's, auto: bf16 where the device has it natively, "
                        "else fp32 on a CPU, fp16 on an older GPU)")  # fmt: skip


def per_process_batch(total: int, world_size: int, flag: str = "--bs") -> int:
    """The seed's ``--bs`` with ``--mGPUs`` is the total batch over all GPUs: each of ``world_size``
    processes gets ``total / world_size`` images; UserError when it does not divide evenly."""
    if total < 1:
        raise UserError(f"{flag} {total}: the batch size must be at least 1")
    if total % world_size:
        fits = sorted({max(1, total // world_size) * world_size, (total // world_size + 1) * world_size})
        raise UserError(
            f"{flag} {total} with --mGPUs: the total batch must divide evenly among the {world_size} GPUs "
            f"(e.g. {' or '.join(f'{flag} {b}' for b in fits)})"
        )
    return total // world_size


def device_flag(cuda: bool) -> str:
    """The seed ran on the CPU unless ``--cuda``; it only warned when a GPU sat unused."""
    if not cuda:
        import torch

        if torch.cuda.is_available():
            print("note: a CUDA device is available; pass --cuda to use it", file=sys.stderr)
        return "cpu"
    return "cuda"


def torchrun_command(script: str, argv: list[str], nproc: int) -> list[str]:
    """The command line that re-runs ``script argv`` under torchrun with ``nproc`` processes on this node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script, *argv]


def run_fpn(fpn_argv: list[str]) -> int:
    """Run ``fpn <fpn_argv>`` in this process (same error handling and exit codes as the ``fpn`` command)."""
    from fpn.cli import main

    return main(fpn_argv)


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return UserError.exit_code


def script_main(build_parser, to_fpn_argv, argv: list[str] | None = None) -> int:
    """The seed scripts' ``main``: parse the old flags, map them with ``to_fpn_argv(args)`` and run ``fpn``."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        fpn_argv = to_fpn_argv(args)
    except UserError as e:
        return fail(str(e))
    return run_fpn(fpn_argv)
