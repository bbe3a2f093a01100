"""The training loop: data -> loss dict -> sum -> backward -> step, one LambdaLR step per iteration (the
iteration itself is ``fpn.engine.step.TrainStep``, which ``fpn bench --mode train`` times as well).

``train(cfg, ...)`` runs a whole training (single process, or one DDP rank under torchrun) and returns a
``TrainResult``. The run folder ``{save_dir}/{net}/{dataset}/{exp_name}/`` receives ``config.json``,
``metrics.jsonl``, TensorBoard events and a checkpoint ``fpn_{session}_{epoch}_{step}.pth`` after every epoch
(see ``fpn.engine.checkpoint``). Only rank 0 writes and shows progress.

Host synchronisation happens only every ``log_interval`` iterations and at epoch ends: losses are summed on
the device and read then, and a non-finite loss is recorded on the device (first iteration and its losses)
and reported at the next check, before any checkpoint is written. It stops the run with
``NonFiniteLossError`` naming that iteration and the last good checkpoint.

Ctrl-C stops at the next iteration boundary and saves a checkpoint marked ``interrupted``; resuming from it
continues the same epoch. A ``KeyboardInterrupt`` raised inside an iteration (a second Ctrl-C, or one from
code) saves the state of the last finished iteration the same way (BatchNorm running statistics may include
the cut iteration's forward pass), except during the parameter update, when nothing is saved. Resuming
restores the model, optimiser, scheduler, scaler, RNG states and epoch/step, and the data order
(``batch_sampler.set_epoch(epoch, start_iter)``), so the resumed run matches an uninterrupted one exactly
(on the same device and thread count).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from fpn import config as C
from fpn.engine import distributed
from fpn.engine.checkpoint import (
    check_compatible,
    checkpoint_name,
    load_checkpoint,
    load_model_state,
    make_checkpoint,
    rng_state,
    run_dir as make_run_dir,
    save_checkpoint,
    set_rng_state,
    unwrap,
    upgrade_optimizer_state,
)
from fpn.engine.device import PRECISION_NAMES, make_scaler, resolve_precision
from fpn.engine.logger import RunLogger, format_eta, format_train_line
from fpn.engine.prepare import check_config, resolve, seed_everything, split_records
from fpn.engine.schedule import apply_solver, build_optimizer, build_scheduler, describe_optimizer, scaled_lr
from fpn.engine.step import TrainStep
from fpn.errors import UserError

_NO_ITER = torch.iinfo(torch.int64).max


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
    eval_result: Any = None  # EvalResult of the evaluation after training (cfg.eval_at_end)


def train(
    cfg: C.Config,
    *,
    session: int = 1,
    resume: tuple[str | Path, dict] | None = None,
    tensorboard: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``cfg``; ``resume`` = (path, loaded checkpoint dict) continues that run.

    Raises UserError (nothing written) for a bad config, dataset or checkpoint; NonFiniteLossError when the
    loss diverges. Under torchrun each process calls this; they join one process group.
    """
    check_config(cfg)
    info, device = distributed.setup(cfg.device)
    try:
        trainer = _Trainer(cfg, info, device, session, resume, tensorboard, progress, log)
        return trainer.run()
    finally:
        distributed.cleanup()


class _StopRequest:
    """While active (main thread only), the first SIGINT sets ``requested`` instead of raising, so the loop
    can stop at an iteration boundary with a consistent state; a second SIGINT raises KeyboardInterrupt."""

    def __init__(self, log):
        self.requested = False
        self._log = log
        self._previous = None

    def _handler(self, signum, frame):
        if os.getpid() != self._pid:  # a forked data worker: the main process decides, workers carry on
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._log("Ctrl-C: stopping after this iteration and saving a checkpoint (Ctrl-C again to abort)")

    def __enter__(self):
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


class _Interrupted(Exception):
    """Internal: leave the loop to save an interrupted checkpoint."""


class _Trainer:
    def __init__(self, cfg, info, device, session, resume, tensorboard, progress, log):
        self.cfg, self.info, self.device, self.session = cfg, info, device, int(session)
        self.main = info.is_main
        self.say = (log or (lambda s: tqdm.write(s, file=sys.stdout))) if self.main else (lambda s: None)
        self.precision = resolve_precision(cfg.solver.amp, device, flag="--amp")
        cfg.solver.amp_used = self.precision.amp  # saved in config.json and every checkpoint
        self.notes: list[str] = []  # said once at the start, after the precision
        self.tensorboard, self.progress = tensorboard, progress
        if self.session < 1:
            raise UserError(f"--session {session}: must be 1 or more")

        seed_everything(cfg.seed)
        # the main rank may generate data and write record caches; the others read them afterwards
        if self.main:
            self.spec = resolve(cfg, generate=True, log=self.say, exact=True)  # the config's synthetic images
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
        if ckpt is None:
            existing = sorted(self.run_dir.glob(f"fpn_{self.session}_*.pth"))
            if existing:
                raise UserError(
                    f"{self.run_dir}: already holds checkpoints of session {self.session} ({existing[-1].name}); "
                    "continue it with --resume PATH, or pass another --exp-name or --session"
                )

        import fpn.model as fpn_model  # looked up at call time (tests wrap build_detector)
        from fpn.data.loader import build_train_loader

        # resuming or --init: the checkpoint's weights replace the pretrained ones, do not read those
        init = ckpt is None and bool(cfg.model.init)
        self.model = fpn_model.build_detector(
            cfg, len(self.classes) + 1, load_pretrained=ckpt is None and not init
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

    # --- resume, --init ---------------------------------------------------------------------------------------

    def _init_from(self, path: str) -> None:
        """All weights of a detection checkpoint, its class rows matched to this dataset's classes by name."""
        from fpn.engine.transfer import convention_notes, load_transferred

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
        if ckpt.get("interrupted"):
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
        used = ckpt.get("config", {}).get("solver", {}).get("amp_used") or ""  # "" before amp_used was saved
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
            purge = self.iteration + 1 if self.resume_path is not None else None  # drop events after the checkpoint
            self.logger = RunLogger(self.run_dir, tensorboard=self.tensorboard, purge_step=purge)
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
            with _StopRequest(self.say) as self.stop:
                self._loop()
        except _Interrupted:
            interrupted = True
        except BaseException:
            if self.logger is not None:
                self.logger.close()
            raise
        if interrupted and self.logger is not None:
            self.logger.close()
        result = TrainResult(unwrap(self.model), self.run_dir, self.iteration, self.last_checkpoint, interrupted)
        if interrupted:
            return result
        if self.main:
            self.say(f"training done: {self.iteration} iterations; last checkpoint {self.last_checkpoint}")
            if cfg.eval_at_end:
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
                if self.stop.requested:
                    raise KeyboardInterrupt
                t0 = time.perf_counter()
                batch = next(data).to(device, non_blocking=True)
                self.data_time += time.perf_counter() - t0
                names, values = self.train_step(batch.images, batch.image_sizes, batch.targets)
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
        except KeyboardInterrupt:
            bar.close()
            self._save_interrupted(epoch, step, rng_at_step)
            raise _Interrupted from None
        except Exception:
            bar.close()
            if self.stop.requested:  # e.g. data workers killed by the same Ctrl-C
                self._save_interrupted(epoch, step, rng_at_step)
                raise _Interrupted from None
            # a diverged model may fail anywhere: report the divergence, not the symptom (this rank's view only:
            # the other ranks are elsewhere, a collective here could hang)
            self._check_finite(collective=False)
            raise
        bar.close()
        self._save(epoch, ipe - 1, interrupted=False)

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
            f"last good checkpoint: {last}; lower --lr or raise solver.warmup_iters"
        )

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

    def _checkpoint(self, epoch: int, step: int, interrupted: bool, rng: list[dict]) -> dict:
        cfg = self.cfg
        return make_checkpoint(
            self.model, self.optimizer, self.scheduler, self.scaler,
            epoch=epoch, step=step, iteration=self.iteration, config=C.to_dict(cfg), classes=self.classes,
            net=cfg.model.backbone, dataset=cfg.data.dataset, session=self.session, interrupted=interrupted,
            rng=rng,
        )  # fmt: skip

    def _save(self, epoch: int, step: int, interrupted: bool) -> None:
        self._check_finite()  # never save a diverged model
        rng = distributed.all_gather_objects(rng_state(), self.info)
        if self.main:
            path = self.run_dir / checkpoint_name(self.session, epoch, step)
            save_checkpoint(self._checkpoint(epoch, step, interrupted, rng), path)
            self.last_checkpoint = path
            self.say(f"saved {path}")

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
        path = self.run_dir / checkpoint_name(self.session, epoch, steps_done - 1)
        save_checkpoint(self._checkpoint(epoch, steps_done - 1, True, rng), path)
        self.last_checkpoint = path
        self.say(f"interrupted at epoch {epoch} step {steps_done}; saved {path}; resume with --resume {path}")

    # --- evaluation -----------------------------------------------------------------------------------------

    def _evaluate(self):
        from fpn.engine.inference import evaluate_outputs, predict_records
        from fpn.evaluation.report import format_table, write_json

        cfg = self.cfg
        records = self.test_records
        split = self.spec.test_sets[0].split
        t0 = time.perf_counter()
        ids, outputs = predict_records(
            self.model, cfg, records, self.classes, self.device, batch_size=max(1, cfg.solver.batch_size),
            amp=self.precision.amp, progress=self.progress, desc=f"eval {split}",
        )  # fmt: skip
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
