"""Setting up a training run and running it: ``train(cfg, ...)`` (single process, or one DDP rank under
torchrun) checks the config, reads the dataset records, builds the model, loader, optimiser, scheduler and
scaler, restores a resumed checkpoint (or ``--init`` weights), builds the hooks (``fpn.engine.hooks``) and runs
a ``fpn.engine.trainer.Trainer``; it returns a ``TrainResult``.

The run folder ``{save_dir}/{net}/{dataset}/{exp_name}/`` receives ``config.json``, ``run.json`` (how it runs: the
precision resolved, the device, a generated dataset's parameters; every checkpoint holds the same), ``metrics.jsonl``,
TensorBoard events and the checkpoints ``fpn_{session}_{epoch}_{step}.pth`` (see ``fpn.checkpoint``).
Only rank 0 writes and shows progress; temporary files of a checkpoint whose writing was killed are removed.

Resuming restores the model, optimiser, scheduler, scaler, RNG states and epoch/step, and the data order
(``batch_sampler.set_epoch(epoch, start_iter)``), so the resumed run matches an uninterrupted one exactly (on
the same device and thread count).

Errors: UserError (nothing written) for a bad config, dataset or checkpoint, or training from scratch with
frozen BatchNorm; NonFiniteLossError when the loss diverges; running out of device memory propagates as
torch raises it: a caller that passed a ``RunState`` reads where the run was (``fpn train`` turns that into
its one-line ``OutOfMemory`` error, exit code 4); the checkpoints already written are untouched.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

import torch
from torch import nn
from tqdm import tqdm

from fpn import config as C
from fpn.engine import distributed
from fpn.checkpoint import (
    check_compatible,
    checkpoint_files,
    is_mid_epoch,
    load_checkpoint,
    load_model_state,
    make_checkpoint,
    set_rng_state,
    unwrap,
    upgrade_optimizer_state,
)
from fpn.checkpoint import run_dir as make_run_dir
from fpn.data.datasets import describe_split, resolve, split_records
from fpn.engine.device import PRECISION_NAMES, Precision, make_scaler, prepare_for_speed, resolve_precision
from fpn.engine.hooks import (
    SCHEDULER,
    Checkpointer,
    CompileNotice,
    EvalAtEnd,
    LRSchedule,
    MetricsWriter,
    NonFiniteGuard,
    StopOnSignal,
)
from fpn.engine.logger import RunLogger, format_eta
from fpn.engine.prepare import check_from_scratch, seed_everything, stop_signals
from fpn.engine.schedule import (
    apply_solver,
    build_optimizer,
    build_scheduler,
    describe_optimizer,
    scaled_lr,
    small_dataset_epochs,
)
from fpn.engine.graphed_step import GraphedTrainStep
from fpn.engine.step import TrainStep
from fpn.evaluation.coco_eval import check_engine
from fpn.engine.trainer import Trainer, TrainResult, TrainState
from fpn.errors import UserError
from fpn.io import atomic_write_text


@dataclass
class RunState:
    """Where a run is, filled in by ``train`` as it goes, for a caller to describe a failure."""

    device: torch.device | None = None
    precision: Precision | None = None
    trainer: TrainState | None = None  # set once training starts


def eval_batch(cfg: C.Config) -> int:
    """The batch of the evaluation after training."""
    return max(1, cfg.solver.batch_size)


def train(
    cfg: C.Config,
    *,
    session: int = 1,
    resume: tuple[str | Path, dict] | None = None,
    tensorboard: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    asked: Collection[str] = (),
    state: RunState | None = None,
) -> TrainResult:
    """Train ``cfg``; ``resume`` = (path, loaded checkpoint dict) continues that run. ``asked``: the config
    keys the user gave on the command line (``--set``); a synthetic dataset that is there is regenerated only
    for other ``data.synth_*`` values named in it (``fpn.data.datasets.ensure_synthetic``). See the module
    docstring for errors. Under torchrun each process calls this; they join one process group.
    """
    cfg.validate()
    check_from_scratch(cfg, resuming=resume is not None)
    info, device = distributed.setup(cfg.runtime.device)
    prepare_for_speed(device)  # cuDNN's autotuner: training sizes repeat
    try:
        return _Run(cfg, info, device, session, resume, log, asked, state or RunState(), tensorboard, progress).run()
    finally:
        distributed.cleanup()


class _Run:
    """The pieces of one run (built in ``__init__``: every check before anything is written) and ``run``."""

    def __init__(self, cfg, info, device, session, resume, log, asked, state: RunState, tensorboard, progress):
        self.cfg, self.info, self.device, self.session = cfg, info, device, int(session)
        self.tensorboard, self.progress = tensorboard, progress
        self.logger: RunLogger | None = None  # rank 0's, opened when the run starts
        self.main = info.is_main
        self.say = (log or (lambda s: tqdm.write(s, file=sys.stdout))) if self.main else (lambda s: None)
        self.precision = resolve_precision(cfg.runtime.amp, device, flag="--amp")  # recorded in run.json, checkpoints
        state.device, state.precision = device, self.precision
        self.notes: list[str] = []  # said once at the start, after the precision
        if self.session < 1:
            raise UserError(f"--session {session}: must be 1 or more")
        self.every_iters, self.every_s = cfg.solver.checkpoint_interval()

        seed_everything(cfg.seed)
        # the main rank may generate data and write record caches; the others read them afterwards
        self.test_records = None
        if self.main:
            self.spec = resolve(cfg, generate=True, log=self.say, training=True, asked=asked)
            records = split_records(self.spec, "train")
            # read (and so checked) now, not after hours of training; so is what the evaluation at the end needs
            self.test_records = split_records(self.spec, "test") if cfg.eval_at_end else None
            if cfg.eval_at_end and self.spec.metric == "coco":
                check_engine()
        distributed.barrier(info)
        if not self.main:
            self.spec = resolve(cfg, generate=False, log=self.say)
            records = split_records(self.spec, "train")
        self.classes = tuple(self.spec.classes)
        self.say(describe_split("train", records, self.classes, cfg.data.use_difficult))

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
        self._fit_epochs_to_dataset()
        # the solver as this run applies it: lr scaled to the total batch when solver.lr_scaling says so
        self.solver = dataclasses.replace(cfg.solver, lr=scaled_lr(cfg.solver, info.world_size))
        self.scaler = make_scaler(device, self.precision.amp)
        # CUDA graphs read the learning rate from a device tensor (what cannot be captured trains eagerly, said once)
        capturable = (cfg.runtime.cuda_graphs and device.type == "cuda" and not self.scaler.is_enabled()
                      and not info.enabled)  # fmt: skip
        self.optimizer = build_optimizer(self.model, self.solver, grad_scaler=self.scaler.is_enabled(),
                                         capturable=capturable)  # fmt: skip
        self.scheduler = build_scheduler(self.optimizer, self.solver, self.iters_per_epoch)
        seed_everything(cfg.seed + info.rank)  # weights are equal on all ranks; sampling differs per rank

        self.state = TrainState(last_checkpoint=self.resume_path)
        if ckpt is not None:
            self._restore(ckpt)
        self.ddp = self.model
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.train_step = TrainStep(self.ddp, self.optimizer, self.scaler, device, self.precision.amp,
                                    cfg.solver.clip_grad_norm)  # fmt: skip
        if cfg.runtime.cuda_graphs:
            self.train_step = GraphedTrainStep(self.train_step, say=self.say)
        state.trainer = self.state

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

    def _fit_epochs_to_dataset(self) -> None:
        """A small dataset trains at least ``solver.min_iters`` iterations: more epochs, the decay epochs scaled
        (``small_dataset_epochs``). Set in the config, so config.json and the checkpoints hold what runs."""
        s, ipe = self.cfg.solver, self.iters_per_epoch
        epochs, decay = small_dataset_epochs(s.epochs, s.lr_decay_epochs, ipe, s.min_iters)
        if epochs == s.epochs:
            if self.cfg.preset == "synthetic" and self.cfg.data.dataset != "synthetic" and epochs * ipe < 1600:
                self.notes.append(f"note: {epochs * ipe} iterations in all; the synthetic recipe needs about 1600 to "
                                  "learn: --preset small trains at least that many on a small dataset")  # fmt: skip
            return
        decayed = f", lr decay after epochs {', '.join(map(str, decay))}" if decay and s.lr_schedule == "step" else ""
        self.notes.append(f"small dataset: {ipe} iterations/epoch x {s.epochs} epochs is under solver.min_iters="
                          f"{s.min_iters}: training {epochs} epochs ({epochs * ipe} iterations){decayed}; "
                          "--set solver.min_iters=0 trains --epochs as given")  # fmt: skip
        s.epochs, s.lr_decay_epochs = epochs, decay

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
        path, cfg, s = self.resume_path, self.cfg, self.state
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
        s.iteration = int(ckpt["iteration"])
        if is_mid_epoch(ckpt):
            s.epoch, s.step = int(ckpt["epoch"]), int(ckpt["step"]) + 1
        else:
            s.epoch, s.step = int(ckpt["epoch"]) + 1, 0
        if s.step >= self.iters_per_epoch:
            s.epoch, s.step = s.epoch + 1, 0
        if s.epoch > cfg.solver.epochs:
            raise UserError(
                f"--resume {path}: the checkpoint has finished epoch {s.epoch - 1} of {cfg.solver.epochs}; "
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

    # --- the run ---------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        cfg, s = self.cfg, self.state
        if self.main:
            C.save_json(cfg, self.run_dir / "config.json")
            atomic_write_text(self.run_dir / "run.json", json.dumps(self._run_record(), indent=2) + "\n")
            purge = s.iteration + 1 if self.resume_path is not None else None  # drop events after the checkpoint
            self.logger = RunLogger(self.run_dir, tensorboard=self.tensorboard, purge_step=purge, session=self.session)
            self._say_start()
        try:
            trainer = Trainer(self.train_step, self.loader, self._hooks(), cfg.solver.epochs, self.device, s)
            trainer.train()
        finally:
            if self.logger is not None:
                self.logger.close()
        stopped = trainer.stopped
        evaluated = [h.result for h in trainer.hooks if isinstance(h, EvalAtEnd)]
        return TrainResult(unwrap(self.model), self.run_dir, s.iteration, s.last_checkpoint, stopped is not None,
                           requeue=stopped is not None and stopped.kind == SCHEDULER,
                           eval_result=evaluated[0] if evaluated else None)  # fmt: skip

    def _say_start(self) -> None:
        cfg, s = self.cfg, self.state
        what = f"resuming {self.resume_path} at" if self.resume_path else "training from"
        self.say(f"precision: {self.precision}")
        for note in self.notes:
            self.say(note)
        self.say(self._batch_line())
        self.say(
            f"{what} epoch {s.epoch} step {s.step}: {cfg.model.backbone} on {cfg.data.dataset} "
            f"({len(self.classes)} classes), {self.iters_per_epoch} iterations/epoch x {cfg.solver.epochs} "
            f"epochs, device {self.device}; run folder {self.run_dir}"
        )
        self.say(self._checkpoint_line())

    def _checkpoint_line(self) -> str:
        """When checkpoints are written and how many stay (solver.keep_epoch_checkpoints, solver.keep_checkpoints)."""
        s = self.cfg.solver
        kept = (f"the newest {s.keep_epoch_checkpoints} stay" if s.keep_epoch_checkpoints else "all stay")
        line = (f"checkpoints: after every epoch ({kept}: solver.keep_epoch_checkpoints="
                f"{s.keep_epoch_checkpoints}, 0 keeps all)")  # fmt: skip
        if self.every_iters or self.every_s:
            every = f"{self.every_iters} iterations" if self.every_iters else s.checkpoint_every
            line += (f" and every {every} (the newest {s.keep_checkpoints or 'all'} of those stay: "
                     "solver.keep_checkpoints)")  # fmt: skip
        return line

    def _hooks(self) -> list:
        """The policies, in the order they run at every event (see fpn.engine.hooks)."""
        cfg, info, say = self.cfg, self.info, self.say
        guard = NonFiniteGuard(self.device, info, cfg.log_interval, self._likely_causes())
        writer = MetricsWriter(self.logger, info, session=self.session, log_interval=cfg.log_interval,
                               epochs=cfg.solver.epochs, say=say, progress=self.progress)  # fmt: skip
        checkpointer = Checkpointer(self._checkpoint, self.run_dir, self.session, info, every_iters=self.every_iters,
                                    every_s=self.every_s, keep=cfg.solver.keep_checkpoints,
                                    keep_epochs=cfg.solver.keep_epoch_checkpoints, check_finite=guard.check,
                                    say=say)  # fmt: skip
        stop = StopOnSignal(info, stop_signals(cfg.solver), say)
        hooks = [LRSchedule(self.scheduler), guard, stop, writer, checkpointer]
        if cfg.runtime.compile:
            hooks.insert(1, CompileNotice(cfg.runtime.compile, self.device, say))
        if self.main and cfg.eval_at_end:
            hooks.append(EvalAtEnd(self._evaluate, say))
        return hooks

    def _checkpoint(self, epoch: int, step: int, iteration: int, interrupted: bool, mid_epoch: bool,
                    rng: list[dict]) -> dict:  # fmt: skip
        cfg = self.cfg
        return make_checkpoint(
            self.model, self.optimizer, self.scheduler, self.scaler,
            epoch=epoch, step=step, iteration=iteration, config=C.to_dict(cfg, runtime=False), classes=self.classes,
            net=cfg.model.backbone, dataset=cfg.data.dataset, session=self.session, interrupted=interrupted,
            mid_epoch=mid_epoch, rng=rng, run=self._run_record(),
        )  # fmt: skip

    def _run_record(self) -> dict:
        """How this process runs the config (beside it: run.json, and every checkpoint's "run"): the precision it
        resolved, the device, the processes, the runtime section, a generated dataset's own parameters."""
        return {
            "precision": self.precision.amp, "precision_reason": self.precision.reason, "device": str(self.device),
            "world_size": self.info.world_size, "runtime": C.to_dict(self.cfg)["runtime"],
            "data_generator": self.spec.generator, "iters_per_epoch": self.iters_per_epoch,
        }  # fmt: skip

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

    def _evaluate(self):
        """The evaluation after training (rank 0): the test split's detections, scored and logged."""
        from fpn.engine.inference import evaluate_outputs, predict_records
        from fpn.evaluation.report import format_table, write_json

        cfg, records = self.cfg, self.test_records
        split = self.spec.test_sets[0].split
        t0 = time.perf_counter()
        ids, outputs = predict_records(
            self.model, cfg, records, self.classes, self.device, batch_size=eval_batch(cfg), amp=self.precision.amp,
            progress=self.progress, desc=f"eval {split}",
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
            "session": self.session, "epoch": cfg.solver.epochs, "iter": self.state.iteration, "split": split,
            "metric": result.metric, "map": m, "ap": ap,
        })  # fmt: skip
        return result
