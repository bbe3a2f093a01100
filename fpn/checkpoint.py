"""Checkpoints: one plain dict per file, written atomically.

Keys (loadable with ``torch.load(path, map_location="cpu", weights_only=False)``)::

    model, optimizer, scheduler, scaler   state dicts (scaler: {} when fp16 AMP is off)
    epoch        1-based epoch the checkpoint belongs to
    step         0-based index of the last iteration done in that epoch (the seed's naming: at batch 2 the
                 last step of a VOC07 epoch is 5010)
    iteration    iterations done in total (the scheduler's count)
    interrupted  True when saved on a stop request (Ctrl-C, SIGTERM, --stop-signal)
    mid_epoch    True when saved before the end of its epoch (interrupted, or solver.checkpoint_every); resuming
                 then continues that epoch at step + 1 (absent in older files: ``interrupted`` says it)
    config       fpn.config.to_dict of the run's config, without its runtime section (how it ran is not what it is)
    run          how it ran: precision (also stored as ``precision``: none, bf16 or fp16) and its reason, device,
                 world size, the runtime section, a generated dataset's parameters (absent in older files)
    classes      class names without background (tuple)
    net, dataset, session, version (the checkpoint format), fpn_version
    rng          list of per-rank RNG states (python, numpy, torch, cuda)

Reading an older format upgrades it in memory (``upgraded_from`` then names the format read).

A weights-only checkpoint (:func:`weights_checkpoint`, e.g. written by ``fpn convert``) has the required keys
with epoch, step, iteration and session 0 and no optimiser, scheduler, scaler or RNG state: ``fpn test``,
``fpn demo`` and ``fpn train --init`` read it, ``--resume`` refuses it (:func:`has_training_state`).

File name: ``fpn_{session}_{epoch}_{step}.pth`` inside the run folder
``{save_dir}/{net}/{dataset}/{exp_name}/``; :func:`checkpoint_files` lists a folder's in the order a run writes
them, :func:`newest_checkpoint` finds the one ``--resume auto`` continues, :func:`prune_mid_epoch` keeps the
newest ``solver.keep_checkpoints`` mid-epoch ones (epoch-end ones: ``solver.keep_epoch_checkpoints``, in
``fpn.engine.hooks.Checkpointer``).
"""

from __future__ import annotations

import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

import fpn
from fpn.config import Config, ModelConfig, RuntimeConfig, from_dict
from fpn.errors import UserError
from fpn.io import atomic_torch_save

# 1: box head fc1 read each RoI in (channel, y, x) order; 2: in (y, x, channel) order (upgraded on load)
CHECKPOINT_VERSION = 2
FC1_WEIGHT = "roi_heads.box_head.fc1.weight"
REQUIRED_KEYS = ("model", "epoch", "step", "iteration", "config", "classes", "net", "dataset", "session", "version")


_NAME = re.compile(r"fpn_(\d+)_(\d+)_(\d+)\.pth")


def checkpoint_name(session: int, epoch: int, step: int) -> str:
    return f"fpn_{session}_{epoch}_{step}.pth"


def checkpoint_files(folder: str | Path, session: int | None = None) -> list[Path]:
    """The checkpoints ``fpn_{session}_{epoch}_{step}.pth`` in ``folder`` (of ``session`` only, when given),
    oldest first: by (session, epoch, step), the order in which a run writes them (file times are not used:
    copying a folder changes them)."""
    found = []
    for path in Path(folder).glob("fpn_*.pth") if Path(folder).is_dir() else ():
        m = _NAME.fullmatch(path.name)
        if m and (session is None or int(m.group(1)) == session):
            found.append((tuple(map(int, m.groups())), path))
    return [path for _, path in sorted(found)]


def run_dir(save_dir: str | Path, net: str, dataset: str, exp_name: str) -> Path:
    """``{save_dir}/{net}/{dataset}/{exp_name}``; a dataset given as a path contributes its folder name."""
    return Path(save_dir) / net / dataset_dirname(dataset) / exp_name


def dataset_dirname(dataset: str) -> str:
    """A folder-safe name for a dataset name or a dataset folder path."""
    name = Path(str(dataset).rstrip("/\\")).name if ("/" in str(dataset) or "\\" in str(dataset)) else str(dataset)
    return name or "dataset"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel (or DataParallel) wrapper."""
    return getattr(model, "module", model)


# --- RNG state ------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


# --- write ----------------------------------------------------------------------------------------------------


def make_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler,
    *,
    epoch: int,
    step: int,
    iteration: int,
    config: dict,
    classes: Sequence[str],
    net: str,
    dataset: str,
    session: int,
    interrupted: bool = False,
    mid_epoch: bool | None = None,
    rng: list[dict] | None = None,
    run: dict | None = None,
) -> dict[str, Any]:
    """``mid_epoch`` defaults to ``interrupted``; ``run``: how the run ran (its "precision" is stored apart too)."""
    return {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "epoch": int(epoch),
        "step": int(step),
        "iteration": int(iteration),
        "interrupted": bool(interrupted),
        "mid_epoch": bool(interrupted if mid_epoch is None else mid_epoch),
        "config": config,
        "classes": tuple(classes),
        "net": net,
        "dataset": dataset,
        "session": int(session),
        "version": CHECKPOINT_VERSION,
        "fpn_version": fpn.__version__,
        "rng": rng if rng is not None else [rng_state()],
        **({"run": run, "precision": run["precision"]} if run else {}),
    }


def weights_checkpoint(
    model_state: dict, *, config: dict, classes: Sequence[str], net: str, dataset: str, **extra: Any
) -> dict[str, Any]:
    """A checkpoint of weights only (see the module docstring); ``extra`` keys are stored as given."""
    return {
        "model": model_state, "epoch": 0, "step": 0, "iteration": 0, "interrupted": False, "config": config,
        "classes": tuple(classes), "net": net, "dataset": dataset, "session": 0, "version": CHECKPOINT_VERSION,
        "fpn_version": fpn.__version__, **extra,
    }  # fmt: skip


def has_training_state(ckpt: dict) -> bool:
    """Whether ``ckpt`` can be resumed (it holds the optimiser and scheduler state), unlike a weights-only one."""
    return "optimizer" in ckpt and "scheduler" in ckpt


def save_checkpoint(checkpoint: dict, path: str | Path) -> Path:
    path = Path(path)
    atomic_torch_save(checkpoint, path)
    return path


def is_mid_epoch(ckpt: dict) -> bool:
    """Whether ``ckpt`` was saved before the end of its epoch: resuming continues that epoch."""
    return bool(ckpt.get("mid_epoch", ckpt.get("interrupted", False)))


def prune_mid_epoch(folder: str | Path, session: int, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` mid-epoch checkpoints of ``session`` in ``folder`` (``keep`` 0: none
    deleted) and return the deleted paths. Epoch-end checkpoints, and files that cannot be read, stay. Only
    the small entries of each file are read (its tensors are memory-mapped, not loaded)."""
    if keep <= 0:
        return []
    mid = []
    for path in checkpoint_files(folder, session):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception:  # unreadable (truncated, foreign): not ours to delete
            continue
        if isinstance(ckpt, dict) and is_mid_epoch(ckpt):
            mid.append(path)
    for path in mid[:-keep]:
        path.unlink(missing_ok=True)
    return mid[:-keep]


# --- read -----------------------------------------------------------------------------------------------------


def load_checkpoint(path: str | Path, flag: str = "--checkpoint") -> dict[str, Any]:
    """Read and sanity-check a checkpoint; any problem is a one-line UserError naming the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{flag} {path}: checkpoint file not found")
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder, not a checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError,
            AttributeError, ImportError, IndexError, KeyError, TypeError) as e:  # fmt: skip
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a readable checkpoint ({reason[:160]})") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: not an fpn checkpoint (holds a {type(ckpt).__name__}, expected a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path}: not an fpn checkpoint (missing {', '.join(missing)})")
    if ckpt["version"] > CHECKPOINT_VERSION:
        raise UserError(
            f"{path}: checkpoint format {ckpt['version']} is newer than this fpn supports ({CHECKPOINT_VERSION})"
        )
    if ckpt["version"] < 2:
        _upgrade_from_1(ckpt)
    return ckpt


def newest_checkpoint(
    folder: str | Path, session: int | None = None, warn: Callable[[str], None] = print
) -> tuple[Path, dict] | None:
    """(path, checkpoint) of the newest checkpoint in ``folder`` (of ``session``, when given) that loads and
    holds a training state, or None; each newer file skipped (truncated, unreadable, weights only) is one
    ``warn`` line. What ``fpn train --resume auto`` continues from."""
    for path in reversed(checkpoint_files(folder, session)):
        try:
            ckpt = load_checkpoint(path, flag="--resume auto")
        except UserError as e:
            warn(f"--resume auto: skipped {e}")
            continue
        if not has_training_state(ckpt):
            warn(f"--resume auto: skipped {path}: holds weights only")
            continue
        return path, ckpt
    return None


def cyx_to_yxc(weight: Tensor, pool_size: int) -> Tensor:
    """An fc weight (or optimiser buffer) (out, C*s*s) reading (channel, y, x)-ordered input, reordered to read
    fpn's (y, x, channel) order: (out, C, s, s) -> (out, s, s, C) -> (out, C*s*s)."""
    s = int(pool_size)
    c = weight.shape[1] // (s * s)
    return weight.reshape(-1, c, s, s).permute(0, 2, 3, 1).reshape(weight.shape).contiguous()


def fc1_to_yxc(weight: Tensor, ckpt: dict) -> Tensor:
    """A format-1 fc1 weight or optimiser buffer, (fc_dim, C*s*s) in (channel, y, x) order, in (y, x, channel)."""
    model_cfg = ckpt["config"].get("model", {})
    # a missing key means the default, as in from_dict
    return cyx_to_yxc(weight, model_cfg.get("pool_size", ModelConfig.pool_size))


def _upgrade_from_1(ckpt: dict) -> None:
    if FC1_WEIGHT in ckpt["model"]:
        ckpt["model"][FC1_WEIGHT] = fc1_to_yxc(ckpt["model"][FC1_WEIGHT], ckpt)
    ckpt["upgraded_from"] = ckpt["version"]  # the optimiser state is upgraded on resume (it needs the model)
    ckpt["version"] = CHECKPOINT_VERSION


def upgrade_optimizer_state(ckpt: dict, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Reorder the format-1 optimiser buffers of fc1 (momentum, Adam moments) as its weight."""
    if ckpt.get("upgraded_from", CHECKPOINT_VERSION) >= 2:
        return
    weight = dict(unwrap(model).named_parameters()).get(FC1_WEIGHT)
    params = [p for group in optimizer.param_groups for p in group["params"]]  # state_dict's index order
    index = next((i for i, p in enumerate(params) if p is weight), None)
    state = ckpt["optimizer"].get("state", {}).get(index, {})
    for key, value in state.items():
        if torch.is_tensor(value) and value.shape == weight.shape:
            state[key] = fc1_to_yxc(value, ckpt)


def check_compatible(
    ckpt: dict, path: str | Path, classes: Sequence[str] | None = None, net: str | None = None
) -> None:
    """UserError when the checkpoint was trained for another class set or network."""
    if classes is not None and tuple(ckpt["classes"]) != tuple(classes):
        a, b = tuple(ckpt["classes"]), tuple(classes)
        raise UserError(
            f"{path}: checkpoint classes ({len(a)}: {_short(a)}) differ from the dataset's ({len(b)}: {_short(b)})"
        )
    if net is not None and ckpt["net"] != net:
        raise UserError(f"{path}: checkpoint is a {ckpt['net']} network, not {net}")


def load_model_state(model: nn.Module, ckpt: dict, path: str | Path) -> None:
    try:
        unwrap(model).load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(s.strip() for s in first[:2])[:200]
        raise UserError(f"{path}: weights do not fit the model ({detail})") from None


def build_model_from_checkpoint(ckpt: dict, path: str | Path, cfg: Config, device):
    """The checkpoint's detector, in eval mode on ``device`` (no pretrained weights are fetched)."""
    import fpn.model as fpn_model

    model = fpn_model.build_detector(cfg, len(ckpt["classes"]) + 1, load_pretrained=False, device=device,
                                     purpose="infer")
    load_model_state(model, ckpt, path)
    return model.to(device).eval()


def checkpoint_config(ckpt: dict, path: str | Path) -> Config:
    """The checkpoint's config with a default runtime section (the command that runs it sets that: an older file's
    runtime keys, e.g. model.pool_impl, are not applied); UserError naming the file when this fpn cannot read it."""
    try:
        cfg = from_dict(ckpt["config"])
    except UserError as e:
        raise UserError(f"{path}: the checkpoint's config is not valid here ({e})") from None
    cfg.runtime = RuntimeConfig()
    return cfg


def checkpoint_runtime(ckpt: dict) -> RuntimeConfig:
    """The runtime section the checkpoint's run was started with (what resuming that run continues with; every
    other use takes the command's): from its ``run`` record, or, in older files, from the keys of its config."""
    runtime = ckpt.get("run", {}).get("runtime")
    if runtime is not None:
        return from_dict({"runtime": runtime}).runtime
    return from_dict(ckpt["config"]).runtime


def _short(names: Sequence[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")
