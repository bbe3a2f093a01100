"""Optimiser and learning-rate schedule.

SGD with momentum (the seed's and the VOC presets' choice) or AdamW (``solver.optimizer``), with two parameter
groups: weights (``lr``, ``weight_decay``) and biases (``lr * bias_lr_factor``, weight decay only when
``bias_weight_decay``). Frozen parameters (``requires_grad=False``) are left out.

The schedule is a ``LambdaLR`` stepped once per iteration, so its state dict (the iteration count) resumes it
exactly. The factor at iteration ``i`` (0-based, iterations done before this one) is::

    warm-up:  warmup_factor * (1 - a) + a,  a = i / warmup_iters,   while i < warmup_iters
    step:     lr_decay_gamma ** #{e in lr_decay_epochs : i >= e * iters_per_epoch}
    cosine:   (1 + cos(pi * i / total_iters)) / 2,  total_iters = epochs * iters_per_epoch

multiplied together. ``lr_decay_epochs=(10,)`` therefore runs epochs 1..10 at the full rate and epochs 11, 12
at a tenth of it.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
from torch import nn

from fpn.config import LR_SCALINGS, OPTIMIZERS, SCHEDULES, SolverConfig



def lr_factor(
    iteration: int,
    iters_per_epoch: int,
    decay_epochs: Sequence[int],
    gamma: float,
    warmup_iters: int,
    warmup_factor: float,
    cosine_iters: int = 0,
) -> float:
    """Multiplier of the base learning rate at ``iteration`` (see module docstring); ``cosine_iters > 0``
    selects the cosine schedule over that many iterations instead of the step decay."""
    factor = 1.0
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor = warmup_factor * (1.0 - alpha) + alpha
    if cosine_iters > 0:
        return factor * 0.5 * (1.0 + math.cos(math.pi * min(iteration, cosine_iters) / cosine_iters))
    for epoch in decay_epochs:
        if iteration >= epoch * iters_per_epoch:
            factor *= gamma
    return factor


def small_dataset_epochs(
    epochs: int, decay_epochs: Sequence[int], iters_per_epoch: int, min_iters: int
) -> tuple[int, tuple[int, ...]]:
    """(epochs, lr_decay_epochs) for a run of ``iters_per_epoch`` iterations per epoch that should train at least
    ``min_iters`` iterations (``solver.min_iters``): when ``epochs`` are too few they become the fewest that
    reach it, and each decay epoch is scaled by the same factor (rounded half up, at least 1) so the schedule
    keeps its shape; otherwise (or ``min_iters`` 0) both are returned as given. Applying it to its own result
    changes nothing, so a resumed run keeps its schedule."""
    decay = tuple(int(e) for e in decay_epochs)
    if min_iters <= 0 or epochs * iters_per_epoch >= min_iters:
        return epochs, decay
    raised = -(-min_iters // iters_per_epoch)  # ceil
    return raised, tuple(max(1, (2 * e * raised + epochs) // (2 * epochs)) for e in decay)


def param_groups(model: nn.Module, solver: SolverConfig) -> list[dict]:
    """Trainable parameters split into weight and bias groups; empty groups are dropped."""
    weights, biases = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (biases if name.endswith(".bias") or name == "bias" else weights).append(p)
    groups = [{"name": "weights", "params": weights}, {"name": "biases", "params": biases}]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g.update(_group_hyper(g["name"], solver))
    return groups


def _group_hyper(name: str, solver: SolverConfig) -> dict:
    momentum = {"momentum": solver.momentum} if solver.optimizer == "sgd" else {}
    if name == "biases":
        decay = solver.weight_decay if solver.bias_weight_decay else 0.0
        return {"lr": solver.lr * solver.bias_lr_factor, "weight_decay": decay, **momentum}
    return {"lr": solver.lr, "weight_decay": solver.weight_decay, **momentum}


_FUSED_DEVICES = ("cpu", "cuda")  # devices with fused SGD / AdamW kernels used here


def build_optimizer(model: nn.Module, solver: SolverConfig, grad_scaler: bool = False,
                    capturable: bool = False) -> torch.optim.Optimizer:  # fmt: skip
    """SGD or AdamW over ``param_groups``; build it after moving the model to its device: the fused
    (one kernel for all parameters) implementation is used where the device has one (CPU and CUDA).

    ``grad_scaler``: an enabled ``GradScaler`` (fp16) will drive the optimiser. Fused SGD is then not
    used: when the scaler skips a step for an overflow (as it does on the first fp16 steps), torch's
    fused SGD kernel (torch 2.14) has already allocated the momentum buffers uninitialised, and the next
    step reads them as if they held momentum (weights of ~1e23; tests/engine/test_schedule.py). SGD then
    runs the default multi-tensor loop. Fused AdamW zero-fills its moments, so it stays fused (tested too).

    ``capturable`` (CUDA graphs, ``fpn.engine.graphed_step``; CUDA parameters only): each group's learning rate
    is a device tensor, which the schedule overwrites in place, so that a captured step reads the current rate
    without being captured again; SGD fused (its kernel takes the rate as a tensor), AdamW fused and
    ``capturable``. Otherwise the rate is a Python float (the same numbers as ever on a CPU).
    """
    groups = param_groups(model, solver)
    fused = all(p.device.type in _FUSED_DEVICES and p.is_floating_point() for g in groups for p in g["params"])
    if capturable:
        devices = {p.device for g in groups for p in g["params"]}
        if len(devices) != 1 or next(iter(devices)).type != "cuda" or grad_scaler:
            raise ValueError("a capturable optimiser needs all parameters on one CUDA device and no GradScaler")
        device = next(iter(devices))
        for g in groups:
            g["lr"] = torch.tensor(float(g["lr"]), device=device)
    lr = torch.tensor(solver.lr, device=device) if capturable else solver.lr
    if solver.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fused or None, capturable=capturable)
    if solver.optimizer != "sgd":
        raise ValueError(f"unknown optimizer {solver.optimizer!r}; choose one of {OPTIMIZERS}")
    fused = fused and not grad_scaler
    return torch.optim.SGD(groups, lr=lr, momentum=solver.momentum, fused=fused or None)


def capture_problem(optimizer: torch.optim.Optimizer) -> str | None:
    """Why a CUDA graph could not hold ``optimizer.step()`` (None: it can): the rate must be a device tensor
    (``build_optimizer(capturable=True)``), SGD fused, AdamW capturable."""
    groups = optimizer.param_groups
    if not all(isinstance(g["lr"], torch.Tensor) and g["lr"].device.type == "cuda" for g in groups):
        return "its learning rate is a Python number (build_optimizer(capturable=True) makes it a device tensor)"
    if isinstance(optimizer, torch.optim.SGD) and not optimizer.defaults.get("fused"):
        return "SGD is not fused"
    if isinstance(optimizer, torch.optim.AdamW) and not all(g.get("capturable") for g in groups):
        return "AdamW is not capturable"
    if not isinstance(optimizer, (torch.optim.SGD, torch.optim.AdamW)):
        return f"{type(optimizer).__name__} is not known to be capturable"
    return None


def learning_rate(optimizer: torch.optim.Optimizer) -> float | torch.Tensor:
    """Group 0's rate as it is now: a float, or a copy of the device tensor (the schedule overwrites that one in
    place; reading it on the host would wait for the GPU, so it is read at log time)."""
    lr = optimizer.param_groups[0]["lr"]
    return lr.detach().clone() if isinstance(lr, torch.Tensor) else lr


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """``"SGD (fused)"``, ``"AdamW"`` ...: the class and whether the fused kernel runs."""
    fused = optimizer.defaults.get("fused")
    return f"{type(optimizer).__name__}{' (fused)' if fused else ''}"


def scaled_lr(solver: SolverConfig, world_size: int = 1) -> float:
    """The base learning rate a run uses with ``world_size`` processes of ``solver.batch_size`` images each:
    ``solver.lr`` itself (``lr_scaling=none``), or ``solver.lr * total batch / solver.reference_batch``
    (``linear``: the rate follows the total batch, the linear scaling rule of Goyal et al. 2017)."""
    if solver.lr_scaling == "none":
        return solver.lr
    if solver.lr_scaling != "linear":
        raise ValueError(f"unknown lr_scaling {solver.lr_scaling!r}; choose one of {LR_SCALINGS}")
    return solver.lr * solver.batch_size * world_size / solver.reference_batch


def build_scheduler(
    optimizer: torch.optim.Optimizer, solver: SolverConfig, iters_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration warm-up + step decay; call ``scheduler.step()`` after every optimiser step."""
    decay, gamma = tuple(solver.lr_decay_epochs), solver.lr_decay_gamma
    warmup_iters, warmup_factor = solver.warmup_iters, solver.warmup_factor
    if solver.lr_schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule {solver.lr_schedule!r}; choose one of {SCHEDULES}")
    cosine_iters = solver.epochs * iters_per_epoch if solver.lr_schedule == "cosine" else 0

    # a plain function (not a callable object) so the scheduler's state dict holds only the iteration count
    def factor(iteration: int) -> float:
        return lr_factor(iteration, iters_per_epoch, decay, gamma, warmup_iters, warmup_factor, cosine_iters)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def step_scheduler(scheduler) -> None:
    """``scheduler.step()`` after an iteration's update, quiet about an update the GradScaler skipped."""
    with warnings.catch_warnings():  # after a step the GradScaler skipped (fp16 overflow), torch warns
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
        scheduler.step()


def apply_solver(optimizer: torch.optim.Optimizer, scheduler, solver: SolverConfig) -> None:
    """After loading a checkpoint's optimiser and scheduler states, make the config's solver values current
    (base lr, momentum, weight decay per group) at the restored iteration. With an unchanged config this
    reproduces the restored values exactly; with a changed ``--lr`` the new rate applies from here on."""
    iteration = scheduler.last_epoch
    base_lrs = []
    for group, fn in zip(optimizer.param_groups, scheduler.lr_lambdas):
        hyper = _group_hyper(group.get("name", "weights"), solver)
        base_lrs.append(hyper["lr"])
        group["initial_lr"] = hyper["lr"]
        group.update({k: v for k, v in hyper.items() if k != "lr"})  # weight decay (and SGD momentum)
        group["fused"] = optimizer.defaults.get("fused")  # this run's implementation, not the checkpoint's
        if "capturable" in optimizer.defaults:  # this run's too (AdamW)
            group["capturable"] = optimizer.defaults["capturable"]
        lr = hyper["lr"] * fn(iteration)
        tensor = optimizer.defaults["lr"]  # a tensor: this run's rates are device tensors (capturable)
        if not isinstance(tensor, torch.Tensor):  # a number, whatever the checkpoint's run held
            group["lr"] = lr
        elif isinstance(group["lr"], torch.Tensor) and group["lr"].device == tensor.device:
            group["lr"].fill_(lr)  # the tensor a captured step reads stays
        else:
            group["lr"] = torch.tensor(lr, device=tensor.device)
    scheduler.base_lrs = base_lrs
    scheduler._last_lr = [float(g["lr"]) for g in optimizer.param_groups]
