"""The training loop: ``Trainer`` runs epochs of ``TrainStep`` iterations (data -> loss dict -> sum -> backward
-> step) and calls its hooks around them (detectron2's TrainerBase; the policies are ``fpn.engine.hooks``).

``fpn.engine.run.train(cfg, ...)`` (also importable from here, with ``TrainResult``, ``NonFiniteLossError``
and ``REQUEUE_EXIT_CODE``) sets a run up, builds the hooks and runs a Trainer.

Per epoch: ``before_epoch``; ``loader.batch_sampler.set_epoch(epoch, state.step)`` (the data order; a resumed
run continues it mid-epoch); per iteration ``before_step``, the batch (to the device), ``step(images,
image_sizes, gt)`` -> (loss names, loss values on the device), ``state.step`` / ``state.iteration`` counted,
``after_step``; then ``after_epoch``. ``after_train`` runs always, last; ``completed`` says all epochs ran.

Stopping early: a hook raises ``StopTraining`` at a boundary (``before_step``: every rank at the same one);
signal handlers only set ``stop_request`` (StopOnSignal reads it there). A KeyboardInterrupt inside an
iteration (a second Ctrl-C, or one from code), or a failure while a stop is pending (data workers killed by
the same Ctrl-C), becomes a ``StopTraining`` with ``cut`` set: the checkpointer saves the state of the last
finished iteration; with ``during_update``, from the moment ``step`` starts the parameter update (it calls
``step.on_update``) until the iteration's ``after_step`` hooks (the scheduler's step) are done, nothing is
saved. Either way ``on_stop`` runs, ``stopped`` holds the StopTraining and ``train()`` returns. Any other
exception goes to ``on_failure`` (the non-finite guard may replace it) and propagates; outside iterations
(epoch ends) a KeyboardInterrupt propagates too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from fpn.engine.hooks import (  # noqa: F401 (REQUEUE_EXIT_CODE, NonFiniteLossError: re-exported)
    CTRL_C,
    REQUEUE_EXIT_CODE,
    HookBase,
    NonFiniteLossError,
    StopTraining,
)
from fpn.errors import UserError

# where the loop is, for what an interrupt leaves: nothing to save, the last finished iteration, or nothing consistent
_IDLE, _ITERATION, _UPDATE = "idle", "iteration", "update"


@dataclass
class TrainState:
    epoch: int = 1  # 1-based: the epoch running (before the first iteration: the one to run)
    step: int = 0  # iterations done in this epoch
    iteration: int = 0  # iterations done in total
    last_checkpoint: Path | None = None
    evaluating: bool = False  # the evaluation after training is running


@dataclass
class TrainResult:
    model: nn.Module  # the bare model (not the DDP wrapper), in train mode
    run_dir: Path
    iteration: int  # iterations done in total
    last_checkpoint: Path | None
    interrupted: bool = False
    requeue: bool = False  # stopped by SIGTERM or solver.stop_signal (on any rank): exit REQUEUE_EXIT_CODE
    eval_result: Any = None  # EvalResult of the evaluation after training (cfg.eval_at_end)


class Trainer:
    """Runs ``epochs`` epochs of ``step`` (a TrainStep: it calls ``step.on_update``, which the trainer sets) over
    ``loader`` (its ``batch_sampler.set_epoch(epoch, start)`` orders the data) from ``state``; ``hooks`` in order."""

    def __init__(self, step, loader, hooks: Iterable[HookBase], epochs: int, device: torch.device,
                 state: TrainState | None = None):  # fmt: skip
        self.step, self.loader, self.epochs, self.device = step, loader, epochs, device
        self.iters_per_epoch = len(loader)
        self.state = state if state is not None else TrainState()
        self.hooks: list[HookBase] = []
        self.loss_names: tuple[str, ...] = ()  # of the last iteration
        self.loss_values: torch.Tensor | None = None
        self.data_time = 0.0  # seconds the last iteration waited for its batch
        self.stop_request = 0  # 0, or the kind of stop asked for (hooks.CTRL_C, hooks.SCHEDULER)
        self.stopped: StopTraining | None = None
        self.completed = False
        self._phase = _IDLE
        step.on_update = self._update_starts
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def train(self) -> None:
        try:
            self._call("before_train")
            self._loop()
            self.completed = True
        except StopTraining as stop:
            self._stop(stop)
        except BaseException as exc:
            stop = self._as_stop(exc)
            if stop is None:
                self._call("on_failure", exc)
                raise
            self._stop(stop)
        finally:
            self._phase = _IDLE
            self._call("after_train")

    def _loop(self) -> None:
        s = self.state
        while s.epoch <= self.epochs:
            self._call("before_epoch")
            self.loader.batch_sampler.set_epoch(s.epoch, s.step)
            rng = torch.get_rng_state()
            data = iter(self.loader)  # creating the iterator draws a seed: keep the RNG stream independent of it
            torch.set_rng_state(rng)
            while s.step < self.iters_per_epoch:
                self._phase = _ITERATION
                self._call("before_step")
                t0 = time.perf_counter()
                batch = next(data, None)
                if batch is None:
                    raise RuntimeError(f"the train loader stopped after {s.step} of {self.iters_per_epoch} iterations")
                batch = batch.to(self.device, non_blocking=True)
                self.data_time = time.perf_counter() - t0
                self.loss_names, self.loss_values = self.step(batch.images, batch.image_sizes, batch.gt)
                s.iteration += 1
                s.step += 1
                self._call("after_step")
                self._phase = _ITERATION
            self._phase = _IDLE
            self._call("after_epoch")
            s.epoch, s.step = s.epoch + 1, 0

    def _update_starts(self) -> None:
        self._phase = _UPDATE

    def _as_stop(self, exc: BaseException) -> StopTraining | None:
        """The stop an exception inside an iteration means, or None (a failure)."""
        # a failure while a stop is pending is its symptom (data workers killed by the same Ctrl-C); the run's
        # own errors (a diverged loss) are not
        failed = isinstance(exc, Exception) and not isinstance(exc, UserError)
        interrupt = isinstance(exc, KeyboardInterrupt) or (failed and self.stop_request > 0)
        if self._phase == _IDLE or not interrupt:
            return None
        return StopTraining(self.stop_request or CTRL_C, cut=True, during_update=self._phase == _UPDATE)

    def _stop(self, stop: StopTraining) -> None:
        self._phase = _IDLE
        self.stopped = stop
        self._call("on_stop", stop)

    def _call(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(*args)


def __getattr__(name: str):
    if name == "train":  # the set-up lives in fpn.engine.run, which imports this module
        from fpn.engine.run import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
