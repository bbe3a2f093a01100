"""The training loop: data -> loss dict -> sum -> backward -> step, one LambdaLR step per iteration (the
iteration itself is ``fpn.engine.step.TrainStep``, which ``fpn bench --mode train`` times as well).

``train(cfg, ...)`` runs a whole training (single process, or one DDP rank under torchrun) and returns a
``TrainResult``. The run folder ``{save_dir}/{net}/{dataset}/{exp_name}/`` receives ``config.json``,
``metrics.jsonl``, TensorBoard events and a checkpoint ``fpn_{session}_{epoch}_{step}.pth`` after every epoch
(see ``fpn.checkpoint``), and, with ``solver.checkpoint_every`` ("500" iterations, "30m"), mid-epoch
ones of which the newest ``solver.keep_checkpoints`` stay. Only rank 0 writes and shows progress.

Host synchronisation happens only every ``log_interval`` iterations, at checkpoints and at epoch ends: losses
are summed on the device and read then, and a non-finite loss is recorded on the device (first iteration and
its losses) and reported at the next check, before any checkpoint is written. It stops the run with
``NonFiniteLossError`` naming that iteration and the last good checkpoint.

Ctrl-C, SIGTERM (a scheduler's preemption notice, torchrun's shutdown) and ``solver.stop_signal`` (SIGUSR1
or SIGUSR2: ``--stop-signal``) stop at the next iteration boundary and save a checkpoint marked ``interrupted``;
resuming from it continues the same epoch. The run then ends with exit code 130 after Ctrl-C and
``REQUEUE_EXIT_CODE`` (75, EX_TEMPFAIL) after a scheduler's signal: ``--resume auto`` in the same command
continues it. Under torchrun one rank receiving the signal is enough: the ranks agree at every boundary
(``distributed.Vote``, no device synchronisation) and all stop at the same iteration; rank 0 saves. A
``KeyboardInterrupt`` raised inside an iteration (a second Ctrl-C, or one from code) saves the state of the
last finished iteration the same way (BatchNorm running statistics may include the cut iteration's forward
pass), except during the parameter update, when nothing is saved. Resuming restores the model, optimiser,
scheduler, scaler, RNG states and epoch/step, and the data order (``batch_sampler.set_epoch(epoch,
start_iter)``), so the resumed run matches an uninterrupted one exactly (on the same device and thread count).

Running out of device memory is a one-line ``OutOfMemory`` error (exit code 4) naming the batch, the image
size, the precision and what to change; the checkpoints already written are untouched.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

import torch
from torch import nn
from tqdm import tqdm

from fpn import config as C
from fpn.engine import distributed
from fpn.checkpoint import (
    check_compatible,
    checkpoint_files,
    checkpoint_name,
    is_mid_epoch,
    load_checkpoint,
    load_model_state,
    make_checkpoint,
    prune_mid_epoch,
    rng_state,
    run_dir as make_run_dir,
    save_checkpoint,
    set_rng_state,
    unwrap,
    upgrade_optimizer_state,
)
from fpn.engine.device import (
    OUT_OF_MEMORY,
    PRECISION_NAMES,
    make_scaler,
    out_of_memory,
    resolve_precision,
    test_out_of_memory,
)
from fpn.engine.logger import RunLogger, format_eta, format_train_line
from fpn.engine.prepare import check_from_scratch, seed_everything, stop_signals
from fpn.data.datasets import resolve, split_records
from fpn.engine.schedule import apply_solver, build_optimizer, build_scheduler, describe_optimizer, scaled_lr
from fpn.engine.step import TrainStep
from fpn.errors import UserError
from fpn.io import atomic_write_text

_NO_ITER = torch.iinfo(torch.int64).max
REQUEUE_EXIT_CODE = 75  # stopped by a scheduler's signal, state saved: run the same command with --resume auto


class NonFiniteLossError(UserError):
    """Training diverged (NaN or infinite loss). Exit code 3, to tell it from a usage error."""

    exit_code = 3


@dataclass
class TrainResult:
    model: nn.Module  # the bare model (not the DDP wrapper), in train mode
    run_dir: Path
    iteration: int  # iterations done in total
    last_checkpoint: Path | None
    interrupted: bool = False
    requeue: bool = False  # stopped by SIGTERM or solver.stop_signal (on any rank): exit REQUEUE_EXIT_CODE
    eval_result: Any = None  # EvalResult of the evaluation after training (cfg.eval_at_end)


def train(
    cfg: C.Config,
    *,
    session: int = 1,
    resume: tuple[str | Path, dict] | None = None,
    tensorboard: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    asked: Collection[str] = (),
) -> TrainResult:
    """Train ``cfg``; ``resume`` = (path, loaded checkpoint dict) continues that run. ``asked``: the config
    keys the user gave on the command line (``--set``); a synthetic dataset that is there is regenerated only
    for other ``data.synth_*`` values named in it (``fpn.data.datasets.ensure_synthetic``).

    Raises UserError (nothing written) for a bad config, dataset or checkpoint, or training from scratch
    with frozen BatchNorm; NonFiniteLossError when the loss diverges; OutOfMemory. Under torchrun each
    process calls this; they join one process group.
    """
    cfg.validate()
    check_from_scratch(cfg, resuming=resume is not None)
    info, device = distributed.setup(cfg.runtime.device)
    try:
        trainer = _Trainer(cfg, info, device, session, resume, tensorboard, progress, log, asked)
        return trainer.run()
    finally:
        distributed.cleanup()


class _StopRequest:
    """While active (main thread only), a stop request sets ``kind`` instead of ending the process, so the
    loop can stop at an iteration boundary with a consistent state, save it and exit: ``CTRL_C`` for the
    first SIGINT (a second one raises KeyboardInterrupt: abort), ``SCHEDULER`` for ``signals`` (SIGTERM,
    ``solver.stop_signal``; repeated, they are only noted: a scheduler's notice must not cost the checkpoint)."""

    CTRL_C, SCHEDULER = 1, 2

    def __init__(self, log, signals=()):
        self.kind = 0
        self._log = log
        self._signals = (signal.SIGINT, *signals)
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.kind > 0

    def _handler(self, signum, frame):
        if os.getpid() != self._pid:  # a forked data worker: the main process decides, workers carry on
            return
        if signum == signal.SIGINT:
            if self.requested:
                raise KeyboardInterrupt
            self.kind = self.CTRL_C
            self._log("Ctrl-C: stopping after this iteration and saving a checkpoint (Ctrl-C again to abort)")
            return
        name = signal.Signals(signum).name
        if self.kind == self.SCHEDULER:
            self._log(f"{name}: already stopping")
            return
        self.kind = self.SCHEDULER
        self._log(f"{name}: stopping after this iteration and saving a checkpoint (then exit code {REQUEUE_EXIT_CODE}: "
                  "the same command with --resume auto continues)")  # fmt: skip

    def __enter__(self):
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous = {}
        return False


class _Interrupted(Exception):
    """Internal: leave the loop to save an interrupted checkpoint."""


class _Trainer:
    def __init__(self, cfg, info, device, session, resume, tensorboard, progress, log, asked):
        self.cfg, self.info, self.device, self.session = cfg, info, device, int(session)
        self.main = info.is_main
        self.say = (log or (lambda s: tqdm.write(s, file=sys.stdout))) if self.main else (lambda s: None)
        self.precision = resolve_precision(cfg.runtime.amp, device, flag="--amp")  # recorded in run.json, checkpoints
        self.notes: list[str] = []  # said once at the start, after the precision
        self.tensorboard, self.progress = tensorboard, progress
        if self.session < 1:
            raise UserError(f"--session {session}: must be 1 or more")
        self.every_iters, self.every_s = cfg.solver.checkpoint_interval()

        seed_everything(cfg.seed)
        # the main rank may generate data and write record caches; the others read them afterwards
        if self.main:
            self.spec = resolve(cfg, generate=True, log=self.say, training=True, asked=asked)
            records = split_records(self.spec, "train")
            # read (and so checked) now, not after hours of training
            self.test_records = split_records(self.spec, "test") if cfg.eval_at_end else None
        distributed.barrier(info)
        if not self.main:
            self.spec = resolve(cfg, generate=False, log=self.say)
            records = split_records(self.spec, "train")
        self.classes = tuple(self.spec.classes)

        self.resume_path, ckpt = (Path(resume[0]), resume[1]) if resume else (None, None)
        if ckpt is not None:
            check_compatible(ckpt, self.resume_path, self.classes, cfg.model.backbone)
        self.run_dir = make_run_dir(cfg.save_dir, cfg.model.backbone, cfg.data.dataset, cfg.exp_name)
        existing = checkpoint_files(self.run_dir, self.session)
        if ckpt is None and existing:
            raise UserError(
                f"{self.run_dir}: already holds checkpoints of session {self.session} ({existing[-1].name}); "
                "continue it with --resume auto or --resume PATH, or pass another --exp-name or --session"
            )
        if self.main:
            self._tidy_run_dir(existing)

        import fpn.model as fpn_model  # looked up at call time (tests wrap build_detector)
        from fpn.data.loader import build_train_loader

        # resuming or --init: the checkpoint's weights replace the pretrained ones, do not read those
        init = ckpt is None and bool(cfg.model.init)
        self.model = fpn_model.build_detector(
            cfg, len(self.classes) + 1, load_pretrained=ckpt is None and not init, device=device, purpose="train"
        ).to(device)
        if init:
            self._init_from(cfg.model.init)
        self.loader = build_train_loader(cfg, records, self.classes, info.rank, info.world_size,
                                         pin_memory=device.type == "cuda")  # fmt: skip
        self.iters_per_epoch = len(self.loader)
        if self.iters_per_epoch == 0:
            raise UserError(
                f"--bs {cfg.solver.batch_size}: larger than the {len(records)} training images "
                f"({info.world_size} process(es))"
            )
        # the solver as this run applies it: lr scaled to the total batch when solver.lr_scaling says so
        self.solver = dataclasses.replace(cfg.solver, lr=scaled_lr(cfg.solver, info.world_size))
        self.scaler = make_scaler(device, self.precision.amp)
        self.optimizer = build_optimizer(self.model, self.solver, grad_scaler=self.scaler.is_enabled())
        self.scheduler = build_scheduler(self.optimizer, self.solver, self.iters_per_epoch)
        seed_everything(cfg.seed + info.rank)  # weights are equal on all ranks; sampling differs per rank

        self.epoch, self.start_step, self.iteration = 1, 0, 0
        if ckpt is not None:
            self._restore(ckpt)
        self.ddp = self.model
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.train_step = TrainStep(self.ddp, self.optimizer, self.scaler, device, self.precision.amp,
                                    self.scheduler, cfg.solver.clip_grad_norm)  # fmt: skip
        self.last_checkpoint: Path | None = self.resume_path
        self.saved_iteration = self.iteration  # the iteration the newest checkpoint holds
        self.clock = time.monotonic()  # when the last checkpoint was written (solver.checkpoint_every "30m")
        self.stop_kind = 0
        self.vote = distributed.Vote(info, 2)  # (stop request, time-based checkpoint due), agreed per iteration

    def _tidy_run_dir(self, existing: list[Path]) -> None:
        """Remove temporary files of checkpoints whose writing was killed (SIGKILL after a grace period), and
        say when a resumed checkpoint has later ones beside it (``--resume auto`` would take those)."""
        for tmp in self.run_dir.glob(".fpn_*.pth.*.tmp"):
            tmp.unlink(missing_ok=True)
            self.notes.append(f"removed {tmp.name}: an unfinished checkpoint of a killed run")
        resolved = [p.resolve() for p in existing]
        here = self.resume_path.resolve() if self.resume_path is not None else None
        later = [p.name for p in existing[resolved.index(here) + 1:]] if here in resolved else []
        if later:
            self.notes.append(f"note: {self.run_dir} holds later checkpoints of session {self.session} "
                              f"({', '.join(later)}): --resume auto would continue from the newest")  # fmt: skip

    # --- resume, --init ---------------------------------------------------------------------------------------

    def _init_from(self, path: str) -> None:
        """All weights of a detection checkpoint, its class rows matched to this dataset's classes by name."""
        from fpn.interop.transfer import convention_notes, load_transferred

        source = load_checkpoint(path, flag="--init")
        match = load_transferred(self.model, source, path, self.classes)
        self.say(f"--init {path}: {match.describe()}")
        for note in convention_notes(source, self.cfg):
            self.say(f"note: --init {path} was trained with {note}")

    def _restore(self, ckpt: dict) -> None:
        path, cfg = self.resume_path, self.cfg
        load_model_state(self.model, ckpt, path)
        saved = ckpt.get("config", {}).get("solver", {}).get("optimizer", "sgd")
        if saved != cfg.solver.optimizer:
            raise UserError(
                f"{path}: the checkpoint was trained with solver.optimizer={saved}, not {cfg.solver.optimizer}"
            )
        upgrade_optimizer_state(ckpt, self.optimizer, self.model)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
        except (ValueError, KeyError, RuntimeError) as e:
            reason = str(e).splitlines()[0][:160]
            raise UserError(f"{path}: optimiser state does not fit this model ({reason})") from None
        apply_solver(self.optimizer, self.scheduler, self.solver)
        self._restore_precision(ckpt)
        self.iteration = int(ckpt["iteration"])
        if is_mid_epoch(ckpt):
            self.epoch, self.start_step = int(ckpt["epoch"]), int(ckpt["step"]) + 1
        else:
            self.epoch, self.start_step = int(ckpt["epoch"]) + 1, 0
        if self.start_step >= self.iters_per_epoch:
            self.epoch, self.start_step = self.epoch + 1, 0
        if self.epoch > cfg.solver.epochs:
            raise UserError(
                f"--resume {path}: the checkpoint has finished epoch {self.epoch - 1} of {cfg.solver.epochs}; "
                "raise --epochs to train further"
            )
        states = ckpt.get("rng") or []
        if states:
            set_rng_state(states[self.info.rank % len(states)])

    def _restore_precision(self, ckpt: dict) -> None:
        """The GradScaler's state (fp16), and a note when the checkpoint trained in another precision."""
        # "precision" (before 2026-12-07 the config's solver.amp_used; "" before that was saved)
        used = ckpt.get("precision") or ckpt.get("config", {}).get("solver", {}).get("amp_used") or ""
        now, saved_scaler = self.precision.amp, ckpt.get("scaler") or {}
        if used and used != now:
            note = (f"note: the checkpoint trained in {PRECISION_NAMES.get(used, used)}; "
                    f"this run continues in {PRECISION_NAMES[now]}")  # fmt: skip
            if saved_scaler and not self.scaler.is_enabled():
                note += " (its GradScaler state is not needed)"
            elif self.scaler.is_enabled() and not saved_scaler:
                note += " with a new GradScaler"
            self.notes.append(note)
        if saved_scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(saved_scaler)

    # --- loop -----------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        cfg = self.cfg
        self.logger = None
        if self.main:
            C.save_json(cfg, self.run_dir / "config.json")
            atomic_write_text(self.run_dir / "run.json", json.dumps(self._run_record(), indent=2) + "\n")
            purge = self.iteration + 1 if self.resume_path is not None else None  # drop events after the checkpoint
            self.logger = RunLogger(self.run_dir, tensorboard=self.tensorboard, purge_step=purge, session=self.session)
            what = f"resuming {self.resume_path} at" if self.resume_path else "training from"
            self.say(f"precision: {self.precision}")
            for note in self.notes:
                self.say(note)
            self.say(self._batch_line())
            self.say(
                f"{what} epoch {self.epoch} step {self.start_step}: {cfg.model.backbone} on {cfg.data.dataset} "
                f"({len(self.classes)} classes), {self.iters_per_epoch} iterations/epoch x {cfg.solver.epochs} "
                f"epochs, device {self.device}; run folder {self.run_dir}"
            )
        interrupted = False
        try:
            with _StopRequest(self.say, stop_signals(cfg.solver)) as self.stop:
                self._loop()
        except _Interrupted:
            interrupted = True
        except BaseException:
            if self.logger is not None:
                self.logger.close()
            raise
        if interrupted and self.logger is not None:
            self.logger.close()
        result = TrainResult(unwrap(self.model), self.run_dir, self.iteration, self.last_checkpoint, interrupted,
                             requeue=self.stop_kind == _StopRequest.SCHEDULER)  # fmt: skip
        if interrupted:
            return result
        if self.main:
            self.say(f"training done: {self.iteration} iterations; last checkpoint {self.last_checkpoint}")
            if cfg.eval_at_end and self.stop.requested:  # asked to stop during the last iteration
                self.say(f"stop requested: the evaluation is skipped (fpn test --checkpoint {self.last_checkpoint})")
            elif cfg.eval_at_end:
                result.eval_result = self._evaluate()
            self.logger.close()
        return result

    def _batch_line(self) -> str:
        """World size, batch per process and in total, the learning rate and where it comes from."""
        s, world = self.cfg.solver, self.info.world_size
        total = s.batch_size * world
        line = (f"world size {world}: batch {s.batch_size} per process, {total} in total; "
                f"{describe_optimizer(self.optimizer)} lr {self.solver.lr:.4g}")  # fmt: skip
        if s.lr_scaling == "linear":
            return line + f" (solver.lr {s.lr:.4g} x {total} / reference batch {s.reference_batch}: lr_scaling=linear)"
        if total != s.reference_batch:
            return line + (f" (solver.lr as given for a total batch of {total}; the recipe's is {s.reference_batch}: "
                           "--set solver.lr_scaling=linear scales it)")  # fmt: skip
        return line

    def _loop(self) -> None:
        cfg, ipe = self.cfg, self.iters_per_epoch
        epochs = cfg.solver.epochs
        self.total_iters = epochs * ipe
        while self.epoch <= epochs:
            self._run_epoch(self.epoch, self.start_step)
            self.epoch, self.start_step = self.epoch + 1, 0
        self.vote.finish()  # every rank is here: the last agreement in flight is collected

    def _run_epoch(self, epoch: int, start_step: int) -> None:
        cfg, ipe, device = self.cfg, self.iters_per_epoch, self.device
        self.loader.batch_sampler.set_epoch(epoch, start_step)
        state = torch.get_rng_state()
        data = iter(self.loader)  # creating the iterator draws a seed: keep the RNG stream independent of it
        torch.set_rng_state(state)

        bar = tqdm(
            total=ipe, initial=start_step, desc=f"epoch {epoch}/{cfg.solver.epochs}", unit="it",
            dynamic_ncols=True, disable=(not self.main) or (None if self.progress else True), leave=False,
        )  # fmt: skip
        self._reset_window()
        step = start_step
        rng_at_step = None
        try:
            while step < ipe:
                rng_at_step = rng_state()  # the state an interrupted checkpoint resumes from
                self._boundary(epoch, step)
                t0 = time.perf_counter()
                batch = next(data).to(device, non_blocking=True)
                self.data_time += time.perf_counter() - t0
                names, values = self.train_step(batch.images, batch.image_sizes, batch.gt)
                # an interrupt from the update's start (train_step.updating) to here leaves no consistent state
                self.iteration += 1
                step += 1
                self.train_step.updating = False
                self._accumulate(names, values)
                bar.update(1)
                if step % cfg.log_interval == 0 or step == ipe:
                    self._log(epoch, step, bar)
        except StopIteration:
            raise RuntimeError(f"the train loader stopped after {step} of {ipe} iterations") from None
        except (_Interrupted, NonFiniteLossError):
            bar.close()
            raise
        except KeyboardInterrupt:
            bar.close()
            self.stop_kind = self.stop.kind or _StopRequest.CTRL_C
            self._save_interrupted(epoch, step, rng_at_step)
            raise _Interrupted from None
        except Exception as e:
            bar.close()
            if self.stop.requested:  # e.g. data workers killed by the same Ctrl-C
                self.stop_kind = self.stop.kind
                self._save_interrupted(epoch, step, rng_at_step)
                raise _Interrupted from None
            # a diverged model may fail anywhere: report the divergence, not the symptom (this rank's view only:
            # the other ranks are elsewhere, a collective here could hang)
            self._check_finite(collective=False)
            if isinstance(e, OUT_OF_MEMORY):
                raise self._out_of_memory(f"training step (epoch {epoch}, step {step + 1})") from None
            raise
        bar.close()
        self._save(epoch, ipe - 1)

    def _boundary(self, epoch: int, step: int) -> None:
        """Before an iteration (``step`` iterations of ``epoch`` done): stop if some rank was asked to, saving
        the state, and write a mid-epoch checkpoint when ``solver.checkpoint_every`` says so. Every rank
        decides the same here (``distributed.Vote``); reading the stop flag costs no host synchronisation."""
        stop, clock_due = self.vote([self.stop.kind, int(self._clock_due())])
        if stop:
            self._stop_here(epoch, step, stop)
        if self.iteration == self.saved_iteration:  # the newest checkpoint holds this state already
            return
        if clock_due or (self.every_iters and self.iteration % self.every_iters == 0):
            self._save(epoch, step - 1, mid_epoch=True)

    def _clock_due(self) -> bool:
        """Rank 0's clock for a time interval ("30m"); having said "due" it restarts, the save follows when the
        ranks agree."""
        if not (self.every_s and self.main) or time.monotonic() - self.clock < self.every_s:
            return False
        self.clock = time.monotonic()
        return True

    def _stop_here(self, epoch: int, step: int, kind: int) -> None:
        """Every rank stops at this boundary; the state is saved unless the newest checkpoint holds it."""
        self.vote.finish()
        self.stop_kind = kind
        if self.iteration != self.saved_iteration:
            self._save(epoch, step - 1, interrupted=True)
        why = "Ctrl-C" if kind == _StopRequest.CTRL_C else "stop signal"
        if self.last_checkpoint is None:
            self.say(f"stopped ({why}) before the first iteration; nothing saved")
        else:
            self.say(f"stopped ({why}) at epoch {epoch} step {step}; continue with --resume auto (the newest "
                     f"checkpoint, {self.last_checkpoint}) or --resume {self.last_checkpoint}")  # fmt: skip
        raise _Interrupted

    # --- losses, logging ----------------------------------------------------------------------------------------

    def _reset_window(self) -> None:
        self.loss_names: tuple[str, ...] = ()
        self.loss_sum = None
        self.window = 0
        self.data_time = 0.0
        self.window_start = time.perf_counter()
        if not hasattr(self, "first_bad"):
            self.first_bad = torch.full((), _NO_ITER, dtype=torch.int64, device=self.device)
            self.bad_values = None

    def _accumulate(self, names, values: torch.Tensor) -> None:
        """Device-side running sums and the first non-finite iteration; no host synchronisation."""
        if self.loss_sum is None:
            self.loss_names = tuple(names)
            self.loss_sum = torch.zeros_like(values)
            if self.bad_values is None:
                self.bad_values = torch.zeros_like(values)
        self.loss_sum += values
        self.window += 1
        bad = ~torch.isfinite(values.sum())
        first = bad & (self.first_bad == _NO_ITER)
        self.first_bad = torch.where(first, self.iteration, self.first_bad)
        self.bad_values = torch.where(first, values, self.bad_values)

    def _check_finite(self, collective: bool = True) -> None:
        """Raise NonFiniteLossError if any iteration so far (on any rank) had a non-finite loss."""
        first = self.first_bad.clone()
        if self.info.enabled and collective:
            import torch.distributed as dist

            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        first = int(first)
        if first == _NO_ITER:
            return
        detail = ""
        if self.bad_values is not None and int(self.first_bad) == first:
            vals = self.bad_values.tolist()
            detail = ": " + ", ".join(f"{n}={v:.4g}" for n, v in zip(self.loss_names, vals))
        ipe = self.iters_per_epoch
        epoch, step = (first - 1) // ipe + 1, (first - 1) % ipe + 1
        last = str(self.last_checkpoint) if self.last_checkpoint else "none yet"
        raise NonFiniteLossError(
            f"non-finite loss at iteration {first} (epoch {epoch}, step {step}){detail}; training stopped; "
            f"last good checkpoint: {last}; {self._likely_causes()}"
        )

    def _likely_causes(self) -> str:
        """What in this run's config commonly makes a loss diverge, most specific first."""
        cfg, s, m = self.cfg, self.cfg.solver, self.cfg.model
        causes = []
        if m.norm == "frozen_bn" and m.pretrained == "none" and not m.init:
            causes.append("frozen BatchNorm without pretrained weights (--set model.norm=bn)")
        total = s.batch_size * self.info.world_size
        if self.solver.lr > s.lr:
            causes.append(f"lr {self.solver.lr:.4g}: solver.lr {s.lr:.4g} scaled to a total batch of {total}, past "
                          f"the recipe's {s.reference_batch} (lr_scaling=linear)")  # fmt: skip
        elif total < s.reference_batch:
            causes.append(f"solver.lr {s.lr:.4g} is meant for a total batch of {s.reference_batch}, not {total}")
        recipe = C.PRESETS.get(cfg.preset)
        if recipe is not None and s.lr > recipe().solver.lr:
            causes.append(f"--lr {s.lr:.4g} above the {cfg.preset} recipe's {recipe().solver.lr:.4g}")
        if self.precision.amp == "fp16":
            causes.append("fp16's narrow range (--amp bf16 or none)" if self.scaler.is_enabled()
                          else "fp16 without a GradScaler")  # fmt: skip
        advice = f"lower --lr or raise solver.warmup_iters (now {s.warmup_iters})"
        return f"likely causes: {'; '.join(causes)}; else {advice}" if causes else advice

    def _out_of_memory(self, step: str) -> Exception:
        d = self.cfg.data
        last = self.last_checkpoint or "none yet"
        return out_of_memory(
            self.device, step, f"{self.cfg.solver.batch_size} per process", max(d.train_scales), d.max_size,
            self.precision, ("data.train_scales", "data.max_size"), then=f"; last checkpoint: {last}",
        )  # fmt: skip

    def _log(self, epoch: int, step: int, bar) -> None:
        self._check_finite()
        sums = distributed.all_reduce_(self.loss_sum.clone(), self.info) / (self.window * self.info.world_size)
        values = sums.tolist()
        now = time.perf_counter()
        time_per_iter = (now - self.window_start) / max(self.window, 1)
        if self.main:
            record = {
                "session": self.session,
                "epoch": epoch,
                "step": step,
                "iter": self.iteration,
                "loss": float(sum(values)),
                "losses": dict(zip(self.loss_names, values)),
                "lr": float(self.train_step.lr),
                "time": time_per_iter,
                "data_time": self.data_time / max(self.window, 1),
                "eta_s": (self.total_iters - self.iteration) * time_per_iter,
            }
            self.logger.log_train(record)
            bar.set_postfix_str(
                f"loss {record['loss']:.3f} " + " ".join(f"{k} {v:.3f}" for k, v in record["losses"].items())
                + f" lr {record['lr']:.1e}",
                refresh=False,
            )
            self.say(format_train_line(record, self.cfg.solver.epochs, self.iters_per_epoch))
        self.loss_sum.zero_()
        self.window, self.data_time, self.window_start = 0, 0.0, time.perf_counter()

    # --- checkpoints ----------------------------------------------------------------------------------------------

    def _checkpoint(self, epoch: int, step: int, interrupted: bool, mid_epoch: bool, rng: list[dict]) -> dict:
        cfg = self.cfg
        return make_checkpoint(
            self.model, self.optimizer, self.scheduler, self.scaler,
            epoch=epoch, step=step, iteration=self.iteration, config=C.to_dict(cfg, runtime=False), classes=self.classes,
            net=cfg.model.backbone, dataset=cfg.data.dataset, session=self.session, interrupted=interrupted,
            mid_epoch=mid_epoch, rng=rng, run=self._run_record(),
        )  # fmt: skip

    def _run_record(self) -> dict:
        """How this process runs the config (beside it: run.json, and every checkpoint's "run"): the precision it
        resolved, the device, the processes, the runtime section, a generated dataset's own parameters."""
        return {
            "precision": self.precision.amp, "precision_reason": self.precision.reason, "device": str(self.device),
            "world_size": self.info.world_size, "runtime": C.to_dict(self.cfg)["runtime"],
            "data_generator": self.spec.generator,
        }  # fmt: skip

    def _save(self, epoch: int, step: int, interrupted: bool = False, mid_epoch: bool | None = None) -> None:
        """Every rank: the checkpoint after iteration ``step`` (0-based) of ``epoch``, written by rank 0."""
        mid_epoch = interrupted if mid_epoch is None else mid_epoch
        self._check_finite()  # never save a diverged model
        rng = distributed.all_gather_objects(rng_state(), self.info)
        if self.main:
            self._write(self._checkpoint(epoch, step, interrupted, mid_epoch, rng), epoch, step)
            self.say(f"saved {self.last_checkpoint}")
        self.last_checkpoint = self.run_dir / checkpoint_name(self.session, epoch, step)  # every rank knows it
        self.saved_iteration, self.clock = self.iteration, time.monotonic()

    def _write(self, checkpoint: dict, epoch: int, step: int) -> None:
        """Rank 0: write atomically; after a mid-epoch one, only the newest solver.keep_checkpoints stay."""
        path = self.run_dir / checkpoint_name(self.session, epoch, step)
        save_checkpoint(checkpoint, path)
        self.last_checkpoint = path
        if checkpoint["mid_epoch"]:
            keep = self.cfg.solver.keep_checkpoints
            removed = prune_mid_epoch(self.run_dir, self.session, keep)
            if removed:
                self.say(f"removed {', '.join(p.name for p in removed)} (solver.keep_checkpoints={keep} "
                         "mid-epoch checkpoints are kept)")  # fmt: skip

    def _save_interrupted(self, epoch: int, steps_done: int, rng_at_step: dict | None) -> None:
        """Checkpoint after the last finished iteration (``steps_done`` iterations of ``epoch``)."""
        if not self.main:
            return
        if self.train_step.updating:
            where = f"; last checkpoint: {self.last_checkpoint}" if self.last_checkpoint else ""
            self.say(f"interrupted during a parameter update: not saved{where}")
            return
        try:
            self._check_finite(collective=False)
        except NonFiniteLossError as e:
            self.say(f"interrupted; not saving: {e}")
            return
        if steps_done == 0:  # nothing done in this epoch: the previous epoch's checkpoint is the state
            where = f"; resume with --resume {self.last_checkpoint}" if self.last_checkpoint else "; nothing saved"
            self.say(f"interrupted at the start of epoch {epoch}{where}")
            return
        rng = [rng_at_step if rng_at_step is not None else rng_state()]
        self._write(self._checkpoint(epoch, steps_done - 1, True, True, rng), epoch, steps_done - 1)
        path = self.last_checkpoint
        self.say(f"interrupted at epoch {epoch} step {steps_done}; saved {path}; resume with --resume {path} "
                 "(or --resume auto)")  # fmt: skip

    # --- evaluation -----------------------------------------------------------------------------------------

    def _evaluate(self):
        from fpn.engine.inference import evaluate_outputs, predict_records
        from fpn.evaluation.report import format_table, write_json

        cfg = self.cfg
        records = self.test_records
        split = self.spec.test_sets[0].split
        t0 = time.perf_counter()
        batch = max(1, cfg.solver.batch_size)
        try:
            ids, outputs = predict_records(
                self.model, cfg, records, self.classes, self.device, batch_size=batch, amp=self.precision.amp,
                progress=self.progress, desc=f"eval {split}",
            )  # fmt: skip
        except OUT_OF_MEMORY:
            last = self.last_checkpoint
            raise test_out_of_memory(
                self.device, "test step (the evaluation after training)", batch, cfg.data, self.precision,
                then=f"; training is done and saved: fpn test --checkpoint {last} --bs 1 evaluates it",
            ) from None
        self.model.train()
        _, result = evaluate_outputs(
            ids, outputs, records, self.classes, self.spec.metric, split, self.run_dir / f"results_{split}",
            spec=self.spec,
        )  # fmt: skip
        self.say(f"evaluation on {len(records)} {split} images ({format_eta(time.perf_counter() - t0)}):")
        self.say(format_table(result))
        write_json(result, self.run_dir / f"eval_{split}.json")
        m = None if math.isnan(result.map) else float(result.map)
        ap = {c: (None if a is None else float(a)) for c, a in result.ap.items()}
        self.logger.log_eval({
            "session": self.session, "epoch": cfg.solver.epochs, "iter": self.iteration, "split": split,
            "metric": result.metric, "map": m, "ap": ap,
        })  # fmt: skip
        return result
