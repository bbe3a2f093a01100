"""Flags several commands share, defined once: ``--device``, ``--amp``, ``--set``, ``--net``, ``--progress``.

``--device`` and ``--amp`` mean the same in every command: they set ``runtime.device`` / ``runtime.amp`` of the
config the command runs (default: the config's own, ``auto``). ``--set KEY=VALUE`` overrides any config field and
may be repeated; in a command without positional arguments one ``--set`` may also take several (``--set a=1 b=2``),
in one with them (``fpn demo IMAGE ...``, ``fpn convert FORMAT SRC``) each ``--set`` takes one, so that what
follows it is never mistaken for an override.
"""

from __future__ import annotations

import argparse

from fpn import config as C


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: auto, CUDA when available)")


def add_amp(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amp", choices=C.AMP_MODES, help="precision (default auto: bf16 where the device computes it "
                   "natively, else fp32 on a CPU and fp16 with a GradScaler on an older GPU)")  # fmt: skip


def add_set(p: argparse.ArgumentParser, example: str = "model.score_thresh=0.3", several: bool = True) -> None:
    how = "repeatable; one --set may take several" if several else "one per --set, repeatable"
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", type=_key_value, default=[],
                   nargs="+" if several else None, action="extend" if several else "append",
                   help=f"override a config field ({how}), e.g. --set {example}")  # fmt: skip


def add_net(p: argparse.ArgumentParser, default: str = "the preset's") -> None:
    p.add_argument("--net", choices=C.BACKBONES, help=f"backbone (default: {default})")


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show progress bars (on a terminal; default: on)")  # fmt: skip


def _key_value(text: str) -> str:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. model.backbone=res50, got '{text}'")
    return text


def apply_runtime(cfg: C.Config, args: argparse.Namespace) -> C.Config:
    """``cfg`` with ``--device``, ``--amp`` (where the command has them and they were given), then ``--set``."""
    if getattr(args, "device", None):
        cfg.runtime.device = args.device
    if getattr(args, "amp", None):
        cfg.runtime.amp = args.amp
    return C.apply_overrides(cfg, getattr(args, "overrides", []) or [])
