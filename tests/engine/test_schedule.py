import math

import pytest
import torch
from torch import nn

from fpn.config import SolverConfig
from fpn.engine.schedule import (
    apply_solver,
    build_optimizer,
    build_scheduler,
    describe_optimizer,
    lr_factor,
    param_groups,
    scaled_lr,
)


def test_lr_factor_warmup_then_step_decay():
    f = lambda i: lr_factor(i, iters_per_epoch=10, decay_epochs=(2, 3), gamma=0.1, warmup_iters=4, warmup_factor=0.2)
    # warm-up: 0.2 * (1 - i/4) + i/4
    assert [f(i) for i in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert f(19) == 1.0  # last iteration of epoch 2
    assert f(20) == pytest.approx(0.1)  # epoch 3 runs after the decay at the end of epoch 2
    assert f(29) == pytest.approx(0.1)
    assert f(30) == pytest.approx(0.01)


def test_seed_recipe_decays_after_epoch_10_of_12():
    f = lambda i: lr_factor(i, 100, (10,), 0.1, 0, 1.0)
    assert f(999) == 1.0 and f(1000) == pytest.approx(0.1) and f(1199) == pytest.approx(0.1)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.frozen = nn.Linear(3, 1)
        self.frozen.requires_grad_(False)


def test_param_groups_bias_lr_decay_and_frozen_excluded():
    solver = SolverConfig(lr=0.5, weight_decay=0.01, bias_lr_factor=2.0, bias_weight_decay=False, momentum=0.8)
    net = _Net()
    groups = param_groups(net, solver)
    assert [g["name"] for g in groups] == ["weights", "biases"]
    assert groups[0]["params"] == [net.a.weight] and groups[1]["params"] == [net.a.bias]
    assert (groups[0]["lr"], groups[0]["weight_decay"]) == (0.5, 0.01)
    assert (groups[1]["lr"], groups[1]["weight_decay"]) == (1.0, 0.0)
    solver.bias_weight_decay = True
    assert param_groups(net, solver)[1]["weight_decay"] == 0.01


def test_scheduler_steps_per_iteration_and_resumes_exactly():
    solver = SolverConfig(lr=1.0, warmup_iters=2, warmup_factor=0.5, lr_decay_epochs=(1,), lr_decay_gamma=0.1)
    net = nn.Linear(2, 2)
    opt = build_optimizer(net, solver)
    sched = build_scheduler(opt, solver, iters_per_epoch=3)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.5, 0.75, 1.0, 0.1, 0.1])
    state_opt, state_sched = opt.state_dict(), sched.state_dict()

    net2 = nn.Linear(2, 2)
    opt2 = build_optimizer(net2, solver)
    sched2 = build_scheduler(opt2, solver, iters_per_epoch=3)
    opt2.load_state_dict(state_opt)
    sched2.load_state_dict(state_sched)
    apply_solver(opt2, sched2, solver)
    assert sched2.last_epoch == 5
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]


def test_apply_solver_makes_a_new_base_lr_current():
    solver = SolverConfig(lr=1.0, warmup_iters=0, lr_decay_epochs=(1,), lr_decay_gamma=0.1, bias_lr_factor=2.0)
    opt = build_optimizer(nn.Linear(2, 2), solver)
    sched = build_scheduler(opt, solver, iters_per_epoch=2)
    for _ in range(3):
        opt.step()
        sched.step()
    solver.lr = 4.0
    apply_solver(opt, sched, solver)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.4, 0.8])
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.4, 0.8])


def test_cosine_schedule_after_warmup_ends_at_zero():
    f = lambda i: lr_factor(i, 10, (1,), 0.1, warmup_iters=2, warmup_factor=0.5, cosine_iters=40)
    assert f(0) == pytest.approx(0.5 * (1 + math.cos(0)) / 2)  # warm-up times the cosine
    assert f(20) == pytest.approx(0.5)  # half way; the step decay at epoch 1 is not applied
    assert f(30) == pytest.approx((1 + math.cos(math.pi * 0.75)) / 2)
    assert f(40) == pytest.approx(0.0) and f(50) == pytest.approx(0.0)
    solver = SolverConfig(lr=2.0, warmup_iters=0, epochs=2, lr_schedule="cosine")
    opt = build_optimizer(nn.Linear(2, 2), solver)
    sched = build_scheduler(opt, solver, iters_per_epoch=4)  # 8 iterations in all
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0 * (1 + math.cos(math.pi * i / 8)) / 2 for i in range(8)])


def test_adamw_groups_carry_no_momentum_and_resume():
    solver = SolverConfig(optimizer="adamw", lr=0.01, weight_decay=0.05, bias_lr_factor=2.0)
    net = nn.Linear(2, 2)
    opt = build_optimizer(net, solver)
    assert isinstance(opt, torch.optim.AdamW)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.01, 0.05), (0.02, 0.0)]
    assert all("momentum" not in g for g in opt.param_groups)
    sched = build_scheduler(opt, solver, iters_per_epoch=3)
    net(torch.ones(1, 2)).sum().backward()
    opt.step(), sched.step()
    opt2 = build_optimizer(nn.Linear(2, 2), solver)
    sched2 = build_scheduler(opt2, solver, iters_per_epoch=3)
    opt2.load_state_dict(opt.state_dict()), sched2.load_state_dict(sched.state_dict())
    apply_solver(opt2, sched2, solver)
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert all("momentum" not in g for g in opt2.param_groups)
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(net, SolverConfig(optimizer="adam"))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_optimizer_steps_like_the_plain_one_and_stays_fused_on_resume(name):
    solver = SolverConfig(optimizer=name, lr=0.01, weight_decay=0.05)
    torch.manual_seed(0)
    fused_net, plain_net = nn.Linear(5, 3), nn.Linear(5, 3)
    plain_net.load_state_dict(fused_net.state_dict())
    fused = build_optimizer(fused_net, solver)
    assert all(g["fused"] for g in fused.param_groups)
    cls = type(fused)
    plain = cls(param_groups(plain_net, solver), lr=solver.lr, **({"momentum": 0.9} if name == "sgd" else {}))
    x = torch.randn(4, 5)
    for _ in range(3):
        for net, opt in ((fused_net, fused), (plain_net, plain)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    torch.testing.assert_close(fused_net.weight, plain_net.weight)
    # a checkpoint written by an unfused optimiser resumes fused
    resumed = build_optimizer(nn.Linear(5, 3), solver)
    sched = build_scheduler(resumed, solver, iters_per_epoch=3)
    resumed.load_state_dict(plain.state_dict())
    assert not any(g["fused"] for g in resumed.param_groups)
    apply_solver(resumed, sched, solver)
    assert all(g["fused"] for g in resumed.param_groups)


def test_no_fused_sgd_under_an_enabled_grad_scaler():
    net = nn.Linear(2, 2)
    sgd, adamw = SolverConfig(), SolverConfig(optimizer="adamw")
    assert describe_optimizer(build_optimizer(net, sgd)) == "SGD (fused)"
    assert describe_optimizer(build_optimizer(net, sgd, grad_scaler=True)) == "SGD"
    assert describe_optimizer(build_optimizer(net, adamw, grad_scaler=True)) == "AdamW (fused)"


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_overflow_skipped_first_step_equals_the_unfused_reference(device, name):
    """fp16's GradScaler skips the first step (an overflow), then steps normally. torch's fused SGD left its
    momentum uninitialised there (weights ~1e23 after the next step); what build_optimizer gives under a
    scaler must match the plain per-parameter loop exactly."""
    solver = SolverConfig(optimizer=name, lr=0.1, momentum=0.9, weight_decay=1e-4)

    def train(make_optimizer):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).to(device)
        opt = make_optimizer(net)
        scaler = torch.amp.GradScaler(device.type)
        x = torch.randn(5, 4).to(device)
        for factor in (float("inf"), 1.0, 1.0):  # step 1 overflows and is skipped
            opt.zero_grad()
            scaler.scale(net(x).square().sum() * factor).backward()
            scaler.step(opt)
            scaler.update()
        assert scaler.get_scale() == 2.0**15  # halved once: exactly one step was skipped
        return net

    def reference(net):
        cls = torch.optim.SGD if name == "sgd" else torch.optim.AdamW
        extra = {"momentum": solver.momentum} if name == "sgd" else {}
        return cls(param_groups(net, solver), lr=solver.lr, foreach=False, **extra)

    ours = train(lambda net: build_optimizer(net, solver, grad_scaler=True))
    plain = train(reference)
    for p, q in zip(ours.parameters(), plain.parameters()):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, q)


def test_lr_scaling_none_or_linear_in_the_total_batch():
    solver = SolverConfig(lr=0.02, batch_size=4, reference_batch=16)
    assert scaled_lr(solver, world_size=8) == 0.02  # none (the default): the rate as given
    solver.lr_scaling = "linear"
    assert scaled_lr(solver, world_size=8) == pytest.approx(0.04)  # total 32 = 2 x the reference 16
    assert scaled_lr(solver, world_size=1) == pytest.approx(0.005)
    solver.lr_scaling = "sqrt"
    with pytest.raises(ValueError, match="lr_scaling"):
        scaled_lr(solver)
