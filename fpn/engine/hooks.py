"""The training loop's policies, one hook each (``fpn.engine.trainer.Trainer`` runs them; detectron2's HookBase).

A hook reads the trainer (``self.trainer``): ``state`` (epoch, step, iteration, last checkpoint),
``iters_per_epoch``, ``step`` (the TrainStep: its ``lr`` is the rate the last iteration used), the last
iteration's ``loss_names``, ``loss_values`` (on the device) and ``data_time``, ``stop_request`` and
``completed``. Hooks run in list order at every event; ``fpn.engine.run`` orders them LRSchedule,
NonFiniteGuard, StopOnSignal, MetricsWriter, Checkpointer, EvalAtEnd: the guard checks before the writer
logs, a stop is decided before a mid-epoch checkpoint, the bar closes before a checkpoint is announced.

Host synchronisation happens only every ``log_interval`` iterations, at checkpoints and at epoch ends: the
writer sums losses on the device and reads them then, and the guard records a non-finite loss on the device
(first iteration and its losses) and reports it at the next check, before any checkpoint is written:
``NonFiniteLossError`` names that iteration, the last good checkpoint and likely causes.

Ctrl-C, SIGTERM (a scheduler's preemption notice, torchrun's shutdown) and ``solver.stop_signal`` (SIGUSR1
or SIGUSR2: ``--stop-signal``) stop at the next iteration boundary (``StopOnSignal``) and the checkpointer
saves a checkpoint marked ``interrupted``; resuming from it continues the same epoch. The run then ends with
exit code 130 after Ctrl-C and ``REQUEUE_EXIT_CODE`` (75, EX_TEMPFAIL) after a scheduler's signal: ``--resume
auto`` in the same command continues it. Under torchrun one rank receiving the signal is enough: the ranks
agree at every boundary (``distributed.Vote``, no device synchronisation) and all stop at the same iteration;
rank 0 saves. The checkpointer also writes a checkpoint after every epoch and, with
``solver.checkpoint_every`` ("500" iterations, "30m"), mid-epoch ones of which the newest
``solver.keep_checkpoints`` stay.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from fpn.engine import distributed
from fpn.checkpoint import (
    checkpoint_files,
    checkpoint_name,
    is_mid_epoch,
    prune_mid_epoch,
    rng_state,
    save_checkpoint,
)
from fpn.engine.logger import format_train_line
from fpn.engine.schedule import step_scheduler
from fpn.errors import UserError

REQUEUE_EXIT_CODE = 75  # stopped by a scheduler's signal, state saved: run the same command with --resume auto
CTRL_C, SCHEDULER = 1, 2  # kinds of stop request (a vote takes their maximum: a scheduler's signal wins)
_NO_ITER = torch.iinfo(torch.int64).max


class NonFiniteLossError(UserError):
    """Training diverged (NaN or infinite loss). Exit code 3, to tell it from a usage error."""

    exit_code = 3


class StopTraining(Exception):
    """Ends a run early. ``kind``: CTRL_C or SCHEDULER. ``cut``: an iteration was cut short (a KeyboardInterrupt
    inside it, or a failure while a stop was pending), so only this rank knows and the state to keep is the
    last finished iteration's; else all ranks stopped at the same boundary. ``during_update``: cut during the
    parameter update, which leaves no consistent state to keep."""

    def __init__(self, kind: int, cut: bool = False, during_update: bool = False):
        super().__init__(kind)
        self.kind, self.cut, self.during_update = kind, cut, during_update


class HookBase:
    """Does nothing at every event; a policy overrides the ones it needs. ``trainer`` is set on registration."""

    trainer: Any = None

    def before_train(self) -> None: ...

    def before_epoch(self) -> None: ...

    def before_step(self) -> None:
        """At an iteration boundary (``state.step`` iterations of ``state.epoch`` done); may raise StopTraining."""

    def after_step(self) -> None:
        """The iteration is counted in ``state``; its losses are ``trainer.loss_values``."""

    def after_epoch(self) -> None: ...

    def after_train(self) -> None:
        """Always, last (also after a stop or a failure): ``trainer.completed`` says whether all epochs ran."""

    def on_stop(self, stop: StopTraining) -> None: ...

    def on_failure(self, exc: BaseException) -> None:
        """An exception is ending the run; a hook may raise a more telling one instead."""


def log_due(trainer, interval: int) -> bool:
    """Whether the iteration just finished is a logging (and so a host-synchronising) one."""
    step = trainer.state.step
    return step % interval == 0 or step == trainer.iters_per_epoch


class LRSchedule(HookBase):
    """One step of the per-iteration schedule after every iteration (so a checkpoint after iteration N holds
    the scheduler at N; the rate iteration N used is ``TrainStep.lr``, read at its update)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def after_step(self) -> None:
        step_scheduler(self.scheduler)


class CompileNotice(HookBase):
    """With ``runtime.compile``: says once what compiling cost, the first iteration's seconds (the graph is traced
    and compiled there; each further padded input shape compiles once more, ``data.pad_bucket`` keeps them few).
    The first iteration waits for the device once to be timed; no other iteration does."""

    def __init__(self, backend: str, device, say: Callable[[str], None] = print):
        self.backend, self.device, self.say = backend, torch.device(device), say
        self.t0: float | None = None
        self.done = False

    def before_step(self) -> None:
        if not self.done:
            self.t0 = time.perf_counter()

    def after_step(self) -> None:
        if self.done or self.t0 is None:
            return
        self.done = True
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.say(f"torch.compile ({self.backend}): the first iteration took {time.perf_counter() - self.t0:.1f} s "
                 "(compiling; a new padded input shape compiles once more)")


class NonFiniteGuard(HookBase):
    """Records the first iteration with a non-finite loss on the device (no host synchronisation) and raises
    ``NonFiniteLossError`` at the next check: every ``log_interval`` iterations, before every checkpoint
    (``check``, which the checkpointer calls), and when a failure ends the run (a diverged model may fail
    anywhere: the divergence is reported, not the symptom)."""

    def __init__(self, device, info: distributed.DistInfo, log_interval: int, likely_causes: str):
        self.info, self.log_interval, self.likely_causes = info, log_interval, likely_causes
        self.first_bad = torch.full((), _NO_ITER, dtype=torch.int64, device=device)
        self.bad_values: torch.Tensor | None = None  # the losses of that iteration
        self.names: tuple[str, ...] = ()

    def after_step(self) -> None:
        t = self.trainer
        values = t.loss_values
        if self.bad_values is None:
            self.bad_values, self.names = torch.zeros_like(values), tuple(t.loss_names)
        first = ~torch.isfinite(values.sum()) & (self.first_bad == _NO_ITER)
        self.first_bad = torch.where(first, t.state.iteration, self.first_bad)
        self.bad_values = torch.where(first, values, self.bad_values)
        if log_due(t, self.log_interval):
            self.check()

    def on_failure(self, exc: BaseException) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, NonFiniteLossError):
            # this rank's view only: the other ranks are elsewhere, a collective here could hang
            self.check(collective=False)

    def check(self, collective: bool = True) -> None:
        """Raise NonFiniteLossError if any iteration so far (on any rank, when ``collective``) had a
        non-finite loss."""
        first = self.first_bad.clone()
        if self.info.enabled and collective:
            import torch.distributed as dist

            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        first = int(first)
        if first == _NO_ITER:
            return
        detail = ""
        if self.bad_values is not None and int(self.first_bad) == first:
            detail = ": " + ", ".join(f"{n}={v:.4g}" for n, v in zip(self.names, self.bad_values.tolist()))
        ipe = self.trainer.iters_per_epoch
        epoch, step = (first - 1) // ipe + 1, (first - 1) % ipe + 1
        last = self.trainer.state.last_checkpoint or "none yet"
        raise NonFiniteLossError(
            f"non-finite loss at iteration {first} (epoch {epoch}, step {step}){detail}; training stopped; "
            f"last good checkpoint: {last}; {self.likely_causes}"
        )


class StopOnSignal(HookBase):
    """While training (main thread only), SIGINT and ``signals`` (SIGTERM, ``solver.stop_signal``) set
    ``trainer.stop_request`` instead of ending the process: CTRL_C for the first SIGINT (a second one raises
    KeyboardInterrupt: abort), SCHEDULER for ``signals`` (repeated, they are only noted: a scheduler's notice
    must not cost the checkpoint). At every boundary the ranks vote (``vote``: ``distributed.Vote`` by
    default, which answers one boundary later) and all raise StopTraining at the same one."""

    def __init__(self, info: distributed.DistInfo, signals=(), say: Callable[[str], None] = print, vote=None):
        self.say = say
        self.signals = (signal.SIGINT, *signals)
        self.vote = vote if vote is not None else distributed.Vote(info, 1)
        self._previous: dict = {}
        self._pid = os.getpid()

    def before_train(self) -> None:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handler)

    def before_step(self) -> None:
        (kind,) = self.vote([self.trainer.stop_request])
        if kind:
            self.vote.finish()
            raise StopTraining(kind)

    def after_train(self) -> None:
        if self.trainer.completed:
            self.vote.finish()  # every rank is here: the last agreement in flight is collected
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous = {}

    def _handler(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked data worker: the main process decides, workers carry on
            return
        t = self.trainer
        if signum == signal.SIGINT:
            if t.stop_request:
                raise KeyboardInterrupt
            t.stop_request = CTRL_C
            self.say("Ctrl-C: stopping after this iteration and saving a checkpoint (Ctrl-C again to abort)")
            return
        name = signal.Signals(signum).name
        if t.stop_request == SCHEDULER:
            self.say(f"{name}: already stopping")
            return
        t.stop_request = SCHEDULER
        self.say(f"{name}: stopping after this iteration and saving a checkpoint (then exit code {REQUEUE_EXIT_CODE}: "
                 "the same command with --resume auto continues)")  # fmt: skip


class MetricsWriter(HookBase):
    """Loss windows summed on the device, read every ``log_interval`` iterations and at epoch ends (averaged
    over the window and the ranks): a metrics.jsonl / TensorBoard record (``logger``, rank 0's ``RunLogger``;
    None elsewhere), the console line and the tqdm bar's postfix."""

    def __init__(self, logger, info: distributed.DistInfo, *, session: int, log_interval: int, epochs: int,
                 say: Callable[[str], None] = print, progress: bool = True):  # fmt: skip
        self.logger, self.info, self.session = logger, info, session
        self.log_interval, self.epochs, self.say, self.progress = log_interval, epochs, say, progress
        self.bar = None
        self.loss_sum: torch.Tensor | None = None
        self.window, self.data_time, self.window_start = 0, 0.0, time.perf_counter()

    def before_epoch(self) -> None:
        t = self.trainer
        self.bar = tqdm(
            total=t.iters_per_epoch, initial=t.state.step, desc=f"epoch {t.state.epoch}/{self.epochs}", unit="it",
            dynamic_ncols=True, disable=(not self.info.is_main) or (None if self.progress else True), leave=False,
        )  # fmt: skip
        self.loss_sum = None
        self.window, self.data_time, self.window_start = 0, 0.0, time.perf_counter()

    def after_step(self) -> None:
        t = self.trainer
        if self.loss_sum is None:
            self.loss_sum = torch.zeros_like(t.loss_values)
        self.loss_sum += t.loss_values
        self.window += 1
        self.data_time += t.data_time
        self.bar.update(1)
        if log_due(t, self.log_interval):
            self.log()

    def log(self) -> dict:
        """Every rank (the window's sums are all-reduced): the record of the window just ended."""
        t, s = self.trainer, self.trainer.state
        sums = distributed.all_reduce_(self.loss_sum.clone(), self.info)
        values = (sums / (self.window * self.info.world_size)).tolist()
        time_per_iter = (time.perf_counter() - self.window_start) / max(self.window, 1)
        record = {
            "session": self.session, "epoch": s.epoch, "step": s.step, "iter": s.iteration, "loss": float(sum(values)),
            "losses": dict(zip(t.loss_names, values)), "lr": float(t.step.lr), "time": time_per_iter,
            "data_time": self.data_time / max(self.window, 1),
            "eta_s": (self.epochs * t.iters_per_epoch - s.iteration) * time_per_iter,
        }  # fmt: skip
        if self.logger is not None:
            self.logger.log_train(record)
            self.bar.set_postfix_str(
                f"loss {record['loss']:.3f} " + " ".join(f"{k} {v:.3f}" for k, v in record["losses"].items())
                + f" lr {record['lr']:.1e}",
                refresh=False,
            )
            self.say(format_train_line(record, self.epochs, t.iters_per_epoch))
        self.loss_sum.zero_()
        self.window, self.data_time, self.window_start = 0, 0.0, time.perf_counter()
        return record

    def after_epoch(self) -> None:
        self._close_bar()

    def on_stop(self, stop: StopTraining) -> None:
        self._close_bar()

    def after_train(self) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Checkpointer(HookBase):
    """Every rank decides, rank 0 writes ``make(epoch, step, iteration, interrupted, mid_epoch, rng)`` as
    ``{run_dir}/fpn_{session}_{epoch}_{step}.pth`` (``step`` 0-based, the last one done) after every epoch; at
    a boundary every ``every_iters`` iterations or, by rank 0's clock (agreed by ``distributed.Vote``), every
    ``every_s`` seconds (mid-epoch: the newest ``keep`` of those stay); at a stop (``interrupted``). Of the
    epoch-end checkpoints the newest ``keep_epochs`` stay (0: all; the one just written always). It calls
    ``check_finite`` (the guard's) before every checkpoint: a diverged model is never saved."""

    def __init__(self, make: Callable[..., dict], run_dir: str | Path, session: int, info: distributed.DistInfo, *,
                 every_iters: int = 0, every_s: float = 0.0, keep: int = 2, keep_epochs: int = 0,
                 check_finite=lambda collective=True: None, say: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.make, self.run_dir, self.session, self.info = make, Path(run_dir), session, info
        self.every_iters, self.every_s, self.keep, self.keep_epochs = every_iters, every_s, keep, keep_epochs
        self.check_finite, self.say, self.clock = check_finite, say, clock
        self.vote = distributed.Vote(info, 1) if every_s else None  # rank 0's clock, agreed per iteration
        self.saved_iteration = 0  # the iteration the newest checkpoint holds
        self.last_save = clock()  # when the last checkpoint was written (or the run started)
        self.rng_at_step: dict | None = None  # the RNG state a checkpoint of a cut iteration resumes from

    def before_train(self) -> None:
        self.saved_iteration = self.trainer.state.iteration  # 0, or the resumed checkpoint's
        self.last_save = self.clock()

    def before_step(self) -> None:
        self.rng_at_step = rng_state()
        due = self._clock_due()
        if self.vote is not None:
            (due,) = self.vote([int(due)])
        it = self.trainer.state.iteration
        if it == self.saved_iteration:  # the newest checkpoint holds this state already
            return
        if due or (self.every_iters and it % self.every_iters == 0):
            self.save(mid_epoch=True)

    def after_epoch(self) -> None:
        self.save()

    def after_train(self) -> None:
        t = self.trainer
        if t.completed:
            if self.vote is not None:
                self.vote.finish()
            kept = (f"; the newest {self.keep_epochs} epoch checkpoints are kept (solver.keep_epoch_checkpoints, 0 "
                    "keeps all)" if self.keep_epochs else "")  # fmt: skip
            self.say(f"training done: {t.state.iteration} iterations; last checkpoint {t.state.last_checkpoint}{kept}")

    def _clock_due(self) -> bool:
        """Rank 0's clock for a time interval ("30m"); having said "due" it restarts, the save follows when the
        ranks agree."""
        if not (self.every_s and self.info.is_main) or self.clock() - self.last_save < self.every_s:
            return False
        self.last_save = self.clock()
        return True

    def save(self, interrupted: bool = False, mid_epoch: bool | None = None) -> None:
        """Every rank: the checkpoint after the last finished iteration, written by rank 0."""
        s = self.trainer.state
        self.check_finite()
        rng = distributed.all_gather_objects(rng_state(), self.info)
        path = self.run_dir / checkpoint_name(self.session, s.epoch, s.step - 1)
        if self.info.is_main:
            self._write(path, interrupted, interrupted if mid_epoch is None else mid_epoch, rng)
            self.say(f"saved {path}")
        s.last_checkpoint = path  # every rank knows it
        self.saved_iteration, self.last_save = s.iteration, self.clock()

    def _write(self, path: Path, interrupted: bool, mid_epoch: bool, rng: list[dict]) -> None:
        """Rank 0: write atomically; after a mid-epoch one, only the newest ``keep`` of those stay, after an
        epoch-end one the newest ``keep_epochs`` of those."""
        s = self.trainer.state
        save_checkpoint(self.make(s.epoch, s.step - 1, s.iteration, interrupted, mid_epoch, rng), path)
        s.last_checkpoint = path
        if mid_epoch:
            removed = prune_mid_epoch(self.run_dir, self.session, self.keep)
            if removed:
                self.say(f"removed {', '.join(p.name for p in removed)} (solver.keep_checkpoints={self.keep} "
                         "mid-epoch checkpoints are kept)")  # fmt: skip
        elif self.keep_epochs:  # quietly: the start and end lines say the policy (one line per epoch is noise
            self._prune_epoch_ends(path)  # on a small dataset's many short epochs)

    def _prune_epoch_ends(self, written: Path) -> list[Path]:
        """Delete all but the newest ``keep_epochs`` epoch-end checkpoints of this session, never ``written`` (a
        resumed run may have stale later files beside it); unreadable files stay, as in ``prune_mid_epoch``."""
        ends = []
        for path in checkpoint_files(self.run_dir, self.session):
            try:  # only the small entries are read: the tensors are memory-mapped
                ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
            except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
                continue  # unreadable (truncated, foreign): not ours to delete
            if isinstance(ckpt, dict) and not is_mid_epoch(ckpt):
                ends.append(path)
        removed = [p for p in ends[:-self.keep_epochs] if p != written]
        for path in removed:
            path.unlink(missing_ok=True)
        return removed

    def on_stop(self, stop: StopTraining) -> None:
        if stop.cut:
            self._save_cut(stop)
            return
        # all ranks at the same boundary: the state is saved unless the newest checkpoint holds it
        if self.vote is not None:
            self.vote.finish()
        s = self.trainer.state
        if s.iteration != self.saved_iteration:
            self.save(interrupted=True)
        why = "Ctrl-C" if stop.kind == CTRL_C else "stop signal"
        last = s.last_checkpoint
        if last is None:
            self.say(f"stopped ({why}) before the first iteration; nothing saved")
        else:
            self.say(f"stopped ({why}) at epoch {s.epoch} step {s.step}; continue with --resume auto (the newest "
                     f"checkpoint, {last}) or --resume {last}")  # fmt: skip

    def _save_cut(self, stop: StopTraining) -> None:
        """Rank 0: the checkpoint after the last finished iteration, with the RNG state the cut one started from
        (BatchNorm running statistics may include the cut iteration's forward pass)."""
        s = self.trainer.state
        if not self.info.is_main:
            return
        if stop.during_update:
            where = f"; last checkpoint: {s.last_checkpoint}" if s.last_checkpoint else ""
            self.say(f"interrupted during a parameter update: not saved{where}")
            return
        try:
            self.check_finite(collective=False)
        except NonFiniteLossError as e:
            self.say(f"interrupted; not saving: {e}")
            return
        if s.step == 0:  # nothing done in this epoch: the previous epoch's checkpoint is the state
            where = f"; resume with --resume {s.last_checkpoint}" if s.last_checkpoint else "; nothing saved"
            self.say(f"interrupted at the start of epoch {s.epoch}{where}")
            return
        path = self.run_dir / checkpoint_name(self.session, s.epoch, s.step - 1)
        self._write(path, True, True, [self.rng_at_step if self.rng_at_step is not None else rng_state()])
        self.say(f"interrupted at epoch {s.epoch} step {s.step}; saved {path}; resume with --resume {path} "
                 "(or --resume auto)")  # fmt: skip


class EvalAtEnd(HookBase):
    """``evaluate()`` once all epochs ran (rank 0, ``cfg.eval_at_end``); skipped when a stop was requested
    during the last iteration. ``trainer.state.evaluating`` tells an error handler where the run failed."""

    def __init__(self, evaluate: Callable[[], Any], say: Callable[[str], None] = print):
        self.evaluate, self.say = evaluate, say
        self.result: Any = None

    def after_train(self) -> None:
        t = self.trainer
        if not t.completed:
            return
        if t.stop_request:
            self.say(f"stop requested: the evaluation is skipped (fpn test --checkpoint {t.state.last_checkpoint})")
            return
        t.state.evaluating = True
        self.result = self.evaluate()
