"""The training loop and its hooks, driven by a fake step and loader (no model): the loop's events and
interrupt phases, the checkpoint cadence and pruning, the stop vote, the non-finite guard, the metrics
windows, the learning-rate schedule and the evaluation after training."""

import signal

import pytest
import torch

from fpn.config import SolverConfig
from fpn.engine.distributed import DistInfo
from fpn.engine.hooks import (
    CTRL_C,
    SCHEDULER,
    Checkpointer,
    EvalAtEnd,
    HookBase,
    LRSchedule,
    MetricsWriter,
    NonFiniteGuard,
    StopOnSignal,
    StopTraining,
)
from fpn.engine.schedule import build_scheduler, lr_factor
from fpn.engine.trainer import NonFiniteLossError, Trainer, TrainState

ONE = DistInfo()
NAMES = ("a", "b")


class Batch:
    def __init__(self, index):
        self.images, self.image_sizes, self.gt = index, None, None

    def to(self, device, non_blocking=False):
        return self


class Sampler:
    def __init__(self):
        self.epochs, self.start = [], 0

    def set_epoch(self, epoch, start):
        self.epochs.append((epoch, start))
        self.start = start


class Loader:
    def __init__(self, n):
        self.n, self.batch_sampler = n, Sampler()

    def __len__(self):
        return self.n

    def __iter__(self):
        return (Batch(i) for i in range(self.batch_sampler.start, self.n))


class Step:
    """Iteration k (1-based, counting this step's calls) returns losses (k, 10 k); ``actions[k](phase)`` runs
    before the update ("forward") and after ``on_update`` ("update")."""

    def __init__(self, actions=None, values=None):
        self.actions, self.values = actions or {}, values or {}
        self.calls, self.lr, self.on_update = 0, 0.1, None

    def __call__(self, images, image_sizes, gt):
        self.calls += 1
        action = self.actions.get(self.calls, lambda phase: None)
        action("forward")
        self.on_update()
        action("update")
        return NAMES, self.values.get(self.calls, torch.tensor([1.0, 10.0]) * self.calls)


def trainer(hooks, ipe=3, epochs=2, step=None, state=None):
    return Trainer(step or Step(), Loader(ipe), hooks, epochs, torch.device("cpu"), state)


class Recorder(HookBase):
    def __init__(self):
        self.events = []

    def _note(self, event):
        s = self.trainer.state
        self.events.append((event, s.epoch, s.step, s.iteration))

    def before_train(self):
        self._note("before_train")

    def before_epoch(self):
        self._note("before_epoch")

    def before_step(self):
        self._note("before_step")

    def after_step(self):
        self._note("after_step")

    def after_epoch(self):
        self._note("after_epoch")

    def after_train(self):
        self._note("after_train")

    def on_stop(self, stop):
        self.events.append(("on_stop", stop.kind, stop.cut, stop.during_update))

    def on_failure(self, exc):
        self.events.append(("on_failure", type(exc).__name__))


def raises(exc, at="forward"):
    def action(phase):
        if phase == at:
            raise exc

    return action


# --- the loop -------------------------------------------------------------------------------------------------


def test_loop_calls_the_hooks_around_epochs_and_steps_and_resumes_mid_epoch():
    rec = Recorder()
    t = trainer([rec], ipe=2, epochs=2, state=TrainState(epoch=1, step=1, iteration=1))
    t.train()
    assert t.completed and t.stopped is None
    assert rec.events == [
        ("before_train", 1, 1, 1), ("before_epoch", 1, 1, 1), ("before_step", 1, 1, 1), ("after_step", 1, 2, 2),
        ("after_epoch", 1, 2, 2), ("before_epoch", 2, 0, 2), ("before_step", 2, 0, 2), ("after_step", 2, 1, 3),
        ("before_step", 2, 1, 3), ("after_step", 2, 2, 4), ("after_epoch", 2, 2, 4), ("after_train", 3, 0, 4),
    ]  # fmt: skip
    assert t.loader.batch_sampler.epochs == [(1, 1), (2, 0)]  # the data order continues mid-epoch


def test_an_interrupt_in_the_forward_pass_stops_after_the_last_finished_iteration():
    rec = Recorder()
    t = trainer([rec], step=Step({3: raises(KeyboardInterrupt)}))
    t.train()
    assert not t.completed and t.state.iteration == 2
    assert (t.stopped.kind, t.stopped.cut, t.stopped.during_update) == (CTRL_C, True, False)
    assert rec.events[-2:] == [("on_stop", CTRL_C, True, False), ("after_train", 1, 2, 2)]


def test_an_interrupt_during_the_update_or_the_after_step_hooks_is_marked_during_update():
    t = trainer([], step=Step({2: raises(KeyboardInterrupt, at="update")}))
    t.train()
    assert t.stopped.during_update and t.state.iteration == 1

    class Slow(HookBase):  # the scheduler's step is part of the update
        def after_step(self):
            if self.trainer.state.iteration == 2:
                raise KeyboardInterrupt

    t = trainer([Slow()])
    t.train()
    assert t.stopped.during_update and t.state.iteration == 2


def test_a_failure_is_a_stop_only_while_one_is_pending():
    rec = Recorder()
    t = trainer([rec], step=Step({2: raises(RuntimeError("worker killed"))}))
    with pytest.raises(RuntimeError, match="worker killed"):
        t.train()
    assert ("on_failure", "RuntimeError") in rec.events and t.stopped is None

    def pending_then_fail(phase):
        t.stop_request = SCHEDULER
        raise RuntimeError("DataLoader worker exited unexpectedly")  # killed by the same signal

    t = trainer([], step=Step({2: pending_then_fail}))
    t.train()
    assert (t.stopped.kind, t.stopped.cut, t.state.iteration) == (SCHEDULER, True, 1)


def test_an_interrupt_at_an_epoch_end_is_not_a_stop():
    class EpochEnd(HookBase):
        def after_epoch(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer([EpochEnd()]).train()


# --- StopOnSignal -----------------------------------------------------------------------------------------------


class LaggingVote:
    """distributed.Vote across ranks: a boundary's values are read at the next boundary."""

    def __init__(self):
        self.pending, self.finished = [0], 0

    def __call__(self, values):
        agreed, self.pending = self.pending, list(values)
        return agreed

    def finish(self):
        self.finished += 1
        agreed, self.pending = self.pending, [0]
        return agreed


def test_a_stop_request_stops_at_the_boundary_the_vote_agrees_on():
    def request(phase):
        if phase == "forward":
            t.stop_request = SCHEDULER

    t = trainer([StopOnSignal(ONE, say=lambda s: None)], ipe=4, step=Step({2: request}))
    t.train()
    assert (t.stopped.kind, t.stopped.cut, t.state.iteration) == (SCHEDULER, False, 2)  # at once in one process

    vote = LaggingVote()
    t = trainer([StopOnSignal(ONE, say=lambda s: None, vote=vote)], ipe=4, step=Step({2: request}))
    t.train()
    assert (t.stopped.kind, t.state.iteration, vote.finished) == (SCHEDULER, 3, 1)  # cast after 2, read after 3


def test_signals_set_the_request_a_second_ctrl_c_aborts_and_the_handlers_are_restored():
    said = []
    before = signal.getsignal(signal.SIGTERM)

    def signals(phase):
        if phase == "forward":
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)

    t = trainer([StopOnSignal(ONE, (signal.SIGTERM,), said.append)], step=Step({1: signals}))
    t.train()
    assert (t.stopped.kind, t.stopped.cut, t.state.iteration) == (SCHEDULER, False, 1)
    assert said[0].startswith("SIGTERM: stopping after this iteration") and said[1] == "SIGTERM: already stopping"
    assert signal.getsignal(signal.SIGTERM) == before

    def ctrl_c_twice(phase):
        if phase == "forward":
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

    t = trainer([StopOnSignal(ONE, say=said.append)], step=Step({2: ctrl_c_twice}))
    t.train()
    assert (t.stopped.kind, t.stopped.cut, t.state.iteration) == (CTRL_C, True, 1)


# --- Checkpointer -----------------------------------------------------------------------------------------------


def make(epoch, step, iteration, interrupted, mid_epoch, rng):
    return {"epoch": epoch, "step": step, "iteration": iteration, "interrupted": interrupted, "mid_epoch": mid_epoch}


def load(path):
    return torch.load(path, weights_only=False)


def saved(folder):
    keys = ("iteration", "interrupted", "mid_epoch")
    return {p.name: {k: v for k, v in load(p).items() if k in keys} for p in folder.glob("*.pth")}


def test_checkpoints_every_n_iterations_and_epoch_end_keeping_the_newest_mid_epoch(tmp_path):
    said = []
    ckpt = Checkpointer(make, tmp_path, 1, ONE, every_iters=3, keep=1, say=said.append)
    t = trainer([ckpt], ipe=4)
    t.train()
    # iteration 3 (fpn_1_1_2), the epoch end, iteration 6 (fpn_1_2_1, which prunes fpn_1_1_2), the epoch end
    assert saved(tmp_path) == {
        "fpn_1_1_3.pth": {"iteration": 4, "interrupted": False, "mid_epoch": False},
        "fpn_1_2_1.pth": {"iteration": 6, "interrupted": False, "mid_epoch": True},
        "fpn_1_2_3.pth": {"iteration": 8, "interrupted": False, "mid_epoch": False},
    }  # fmt: skip
    assert f"saved {tmp_path / 'fpn_1_1_2.pth'}" in said and any(s.startswith("removed fpn_1_1_2.pth") for s in said)
    assert t.state.last_checkpoint == tmp_path / "fpn_1_2_3.pth"
    assert said[-1] == f"training done: 8 iterations; last checkpoint {tmp_path / 'fpn_1_2_3.pth'}"


def test_only_the_newest_epoch_checkpoints_stay_mid_epoch_ones_by_their_own_count(tmp_path):
    said = []
    ckpt = Checkpointer(make, tmp_path, 1, ONE, every_iters=3, keep=1, keep_epochs=2, say=said.append)
    (tmp_path / "fpn_1_9_0.pth").write_bytes(b"truncated")  # unreadable: not ours to delete
    (tmp_path / "fpn_2_1_1.pth").write_bytes(b"another session")
    t = trainer([ckpt], ipe=2, epochs=4)
    t.train()
    # epoch ends after iterations 2, 4, 6, 8: the newest two stay; the mid-epoch one after iteration 3 counts
    # against solver.keep_checkpoints only; another session's files and unreadable ones are left alone
    assert saved_names(tmp_path) == ["fpn_1_2_0.pth", "fpn_1_3_1.pth", "fpn_1_4_1.pth", "fpn_1_9_0.pth",
                                     "fpn_2_1_1.pth"]  # fmt: skip
    assert load(tmp_path / "fpn_1_2_0.pth")["mid_epoch"] is True
    assert not [s for s in said if s.startswith("removed")]  # epoch-end pruning is said at the start and end only
    assert said[-1] == (f"training done: 8 iterations; last checkpoint {tmp_path / 'fpn_1_4_1.pth'}; the newest 2 "
                        "epoch checkpoints are kept (solver.keep_epoch_checkpoints, 0 keeps all)")  # fmt: skip


def test_the_checkpoint_just_written_stays_beside_later_stale_ones(tmp_path):
    for name in ("fpn_1_5_1.pth", "fpn_1_6_1.pth"):  # epoch ends of an abandoned longer run
        torch.save(make(0, 1, 0, False, False, None), tmp_path / name)
    ckpt = Checkpointer(make, tmp_path, 1, ONE, keep_epochs=1, say=lambda s: None)
    trainer([ckpt], ipe=2, epochs=1).train()
    assert saved_names(tmp_path) == ["fpn_1_1_1.pth", "fpn_1_6_1.pth"]  # the run's own and the newest


def saved_names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_checkpoints_by_the_clock_and_not_again_for_a_resumed_state(tmp_path):
    now = [0.0]
    step = Step({k: (lambda phase: now.__setitem__(0, now[0] + 2) if phase == "forward" else None) for k in range(9)})
    ckpt = Checkpointer(make, tmp_path, 1, ONE, every_s=5, clock=lambda: now[0], say=lambda s: None)
    # resumed after iteration 3 (a multiple of every_iters too): that state is not saved again
    t = trainer([ckpt], ipe=8, epochs=1, step=step, state=TrainState(epoch=1, step=3, iteration=3))
    t.train()
    # 2 s per iteration: due 5 s after the start, at the boundary after iteration 6; then the epoch end
    assert sorted(saved(tmp_path)) == ["fpn_1_1_5.pth", "fpn_1_1_7.pth"]


def test_a_stop_saves_an_interrupted_checkpoint_unless_the_state_is_saved(tmp_path):
    said = []

    def request(phase):
        t.stop_request = CTRL_C

    hooks = [StopOnSignal(ONE, say=said.append), Checkpointer(make, tmp_path, 1, ONE, every_iters=2, say=said.append)]
    t = trainer(hooks, ipe=4, step=Step({2: request}))
    t.train()
    # the boundary after iteration 2: the stop comes first, so its checkpoint is the interrupted one
    assert saved(tmp_path) == {"fpn_1_1_1.pth": {"iteration": 2, "interrupted": True, "mid_epoch": True}}
    path = tmp_path / "fpn_1_1_1.pth"
    assert said[-1] == (f"stopped (Ctrl-C) at epoch 1 step 2; continue with --resume auto (the newest checkpoint, "
                        f"{path}) or --resume {path}")  # fmt: skip

    # asked before the first iteration: the state is the resumed checkpoint's, or there is none
    for last, line in [(path, (f"stopped (Ctrl-C) at epoch 2 step 0; continue with --resume auto (the newest "
                               f"checkpoint, {path}) or --resume {path}")),
                       (None, "stopped (Ctrl-C) before the first iteration; nothing saved")]:  # fmt: skip
        hooks = [StopOnSignal(ONE, say=said.append), Checkpointer(make, tmp_path / "b", 1, ONE, say=said.append)]
        state = TrainState(epoch=2, step=0, iteration=4, last_checkpoint=last) if last else None
        t = trainer(hooks, ipe=4, state=state)
        t.stop_request = CTRL_C
        t.train()
        assert said[-1] == line and not (tmp_path / "b").exists()


def test_a_cut_iteration_saves_the_last_finished_one_with_its_rng_or_nothing_during_an_update(tmp_path):
    said, drawn = [], []

    def draw_then_interrupt(phase):
        drawn.append(torch.rand(3))  # the cut iteration's draws: a resumed run redraws them
        raise KeyboardInterrupt

    def make_with_rng(*args):
        return {**make(*args), "rng": args[-1]}

    t = trainer([Checkpointer(make_with_rng, tmp_path, 1, ONE, say=said.append)], ipe=4,
                step=Step({3: draw_then_interrupt}))  # fmt: skip
    t.train()
    path = tmp_path / "fpn_1_1_1.pth"
    assert saved(tmp_path) == {path.name: {"iteration": 2, "interrupted": True, "mid_epoch": True}}
    assert said[-1] == f"interrupted at epoch 1 step 2; saved {path}; resume with --resume {path} (or --resume auto)"
    torch.set_rng_state(load(path)["rng"][0]["torch"])
    assert torch.equal(torch.rand(3), drawn[0])

    t = trainer([Checkpointer(make, tmp_path / "u", 1, ONE, say=said.append)],
                step=Step({2: raises(KeyboardInterrupt, at="update")}))  # fmt: skip
    t.train()
    assert said[-1] == "interrupted during a parameter update: not saved"


# --- NonFiniteGuard ---------------------------------------------------------------------------------------------


def nan_at(iteration):
    return {iteration: torch.tensor([1.0, float("nan")])}


def test_the_guard_raises_at_the_next_check_naming_the_iteration(tmp_path):
    rec = Recorder()
    guard = NonFiniteGuard("cpu", ONE, log_interval=2, likely_causes="lower --lr")
    t = trainer([guard, rec], ipe=4, step=Step(values=nan_at(5)))  # epoch 2, step 1
    with pytest.raises(NonFiniteLossError) as e:
        t.train()
    assert str(e.value) == ("non-finite loss at iteration 5 (epoch 2, step 1): a=1, b=nan; training stopped; "
                            "last good checkpoint: none yet; lower --lr")  # fmt: skip
    assert t.state.iteration == 6  # found at the check after iteration 6, not before
    assert rec.events[-1] == ("after_train", 2, 2, 6)


def test_the_guard_checks_before_a_checkpoint_and_reports_divergence_instead_of_its_symptom(tmp_path):
    guard = NonFiniteGuard("cpu", ONE, log_interval=10, likely_causes="lower --lr")
    ckpt = Checkpointer(make, tmp_path, 1, ONE, every_iters=3, check_finite=guard.check, say=lambda s: None)
    t = trainer([guard, ckpt], ipe=4, step=Step(values=nan_at(2)))
    with pytest.raises(NonFiniteLossError, match="at iteration 2 .*last good checkpoint: none yet"):
        t.train()
    assert not list(tmp_path.iterdir())  # a diverged model is never saved

    guard = NonFiniteGuard("cpu", ONE, log_interval=10, likely_causes="lower --lr")
    step = Step({3: raises(RuntimeError("CUDA error: an illegal memory access"))}, values=nan_at(2))
    with pytest.raises(NonFiniteLossError, match="at iteration 2"):
        trainer([guard], ipe=4, step=step).train()


# --- MetricsWriter, LRSchedule, EvalAtEnd -----------------------------------------------------------------------


class Logger:
    def __init__(self):
        self.records = []

    def log_train(self, record):
        self.records.append(record)


def test_the_writer_logs_window_averages_at_intervals_and_epoch_ends():
    logger, said = Logger(), []
    writer = MetricsWriter(logger, ONE, session=1, log_interval=2, epochs=2, say=said.append, progress=False)
    t = trainer([writer], ipe=3)
    t.train()
    rows = [(r["epoch"], r["step"], r["iter"], r["losses"]["a"], r["loss"], r["lr"]) for r in logger.records]
    # iterations' losses (k, 10 k): windows {1, 2}, {3}, then per epoch again {4, 5}, {6}
    assert rows == [(1, 2, 2, 1.5, 16.5, 0.1), (1, 3, 3, 3.0, 33.0, 0.1), (2, 2, 5, 4.5, 49.5, 0.1),
                    (2, 3, 6, 6.0, 66.0, 0.1)]  # fmt: skip
    assert all(r["time"] >= r["data_time"] >= 0 and r["session"] == 1 for r in logger.records)
    assert said[0].startswith("[epoch 1/2][iter 2/3] loss 16.5000 (a 1.5000 b 15.0000) lr 1.00e-01 ")
    assert writer.bar is None  # closed


def test_the_schedule_steps_once_per_iteration_and_the_logged_lr_is_the_one_used():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    solver = SolverConfig(lr=0.1, lr_decay_epochs=(1,), lr_decay_gamma=0.5, warmup_iters=2, warmup_factor=0.1)
    scheduler = build_scheduler(optimizer, solver, iters_per_epoch=3)

    class LRStep(Step):  # the TrainStep's reading: the rate of the update it just did
        def __call__(self, *inputs):
            out = super().__call__(*inputs)
            self.lr = optimizer.param_groups[0]["lr"]
            return out

    logger = Logger()
    writer = MetricsWriter(logger, ONE, session=1, log_interval=1, epochs=2, say=lambda s: None, progress=False)
    t = trainer([LRSchedule(scheduler), writer], ipe=3, step=LRStep())
    t.train()
    expected = [0.1 * lr_factor(i, 3, (1,), 0.5, 2, 0.1) for i in range(6)]
    assert [r["lr"] for r in logger.records] == pytest.approx(expected)
    assert expected[:4] == pytest.approx([0.01, 0.055, 0.1, 0.05])
    assert scheduler.last_epoch == 6


def test_the_evaluation_runs_once_after_all_epochs_unless_a_stop_was_asked_for():
    said = []
    evaluations = []
    hook = EvalAtEnd(lambda: evaluations.append(t.state.evaluating) or "result", said.append)
    t = trainer([hook])
    t.train()
    assert evaluations == [True] and hook.result == "result"

    hook = EvalAtEnd(lambda: evaluations.append(1), said.append)
    t = trainer([hook], epochs=1, step=Step({3: lambda phase: setattr(t, "stop_request", SCHEDULER)}))
    t.train()  # asked during the last iteration: no boundary follows, the run completes
    assert t.completed and evaluations == [True]
    assert said == ["stop requested: the evaluation is skipped (fpn test --checkpoint None)"]

    hook = EvalAtEnd(lambda: evaluations.append(1), said.append)
    trainer([hook], step=Step({2: raises(KeyboardInterrupt)})).train()
    assert evaluations == [True] and hook.result is None


def test_stop_training_carries_its_kind():
    stop = StopTraining(SCHEDULER, cut=True)
    assert (stop.kind, stop.cut, stop.during_update) == (SCHEDULER, True, False)


def test_the_compile_notice_says_the_first_iterations_seconds_once():
    import time

    from fpn.engine.hooks import CompileNotice

    said = []
    notice = CompileNotice("inductor", "cpu", said.append)
    step = Step({1: lambda phase: time.sleep(0.05) if phase == "forward" else None})
    trainer([notice], ipe=3, epochs=1, step=step).train()
    assert len(said) == 1 and said[0].startswith("torch.compile (inductor): the first iteration took ")
    assert float(said[0].split("took ")[1].split(" s")[0]) >= 0.05
