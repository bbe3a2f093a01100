"""DDP on the CPU: 2 processes (gloo) train a few iterations and end with identical parameters; a stop signal to
one rank stops both at the same iteration."""

import json
import math
import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp

from fpn import config as C
from fpn.data.synthetic import generate

pytestmark = pytest.mark.slow  # two processes train (torchrun's environment, gloo)

TINY = ["data.synth_train=8", "data.synth_test=4", "data.train_scales=128", "data.test_scale=128", "data.max_size=160",
        "data.flip=False",
        "model.rpn_batch_per_image=64", "model.roi_batch_per_image=32", "solver.warmup_iters=2", "solver.lr=1e-3",
        "solver.batch_size=1", "solver.epochs=1", "data.workers=0", "eval_at_end=False", "device=cpu"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, data_dir, save_dir, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from fpn.engine.trainer import train

    cfg = C.apply_overrides(C.get_preset("synthetic"), TINY + ["solver.lr_scaling=linear", "solver.reference_batch=1"])
    cfg.data.data_dir, cfg.save_dir = str(data_dir), str(save_dir)
    lines = []
    result = train(cfg, progress=False, log=lines.append)
    (out / f"rank{rank}.log").write_text("".join(f"{line}\n" for line in lines))
    torch.save({"params": dict(result.model.named_parameters()), "iteration": result.iteration}, out / f"rank{rank}.pt")


def test_two_cpu_processes_stay_in_sync(tmp_path):
    generate(tmp_path / "data" / "synthetic", seed=0, n_train=8, n_test=4)  # TINY's synth_train / synth_test
    mp.spawn(_worker, args=(2, _free_port(), tmp_path / "data", tmp_path / "runs", tmp_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["iteration"] == r1["iteration"] == 4  # 8 images, batch 1, two shards of 4
    assert r0["params"].keys() == r1["params"].keys()
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), name
    run = tmp_path / "runs" / "res18" / "synthetic" / "default"
    assert sorted(p.name for p in run.glob("*.pth")) == ["fpn_1_1_3.pth"]  # written once, by rank 0
    ckpt = torch.load(run / "fpn_1_1_3.pth", map_location="cpu", weights_only=False)
    assert len(ckpt["rng"]) == 2  # each rank's RNG state, for an exact resume
    assert torch.equal(ckpt["model"]["backbone.conv1.weight"], r0["params"]["backbone.conv1.weight"])
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1  # log_interval 10: the epoch end only
    # linear lr scaling: 2 processes x batch 1 = 2 x the reference batch 1; cosine at iteration 4 of 4
    assert metrics[0]["lr"] == pytest.approx(2e-3 * (1 + math.cos(math.pi * 3 / 4)) / 2)
    log = (tmp_path / "rank0.log").read_text().splitlines()
    assert log[0].startswith("train: ") and log[1].startswith("precision: ")  # the split's counts, the precision
    assert log[2] == ("world size 2: batch 1 per process, 2 in total; AdamW (fused) lr 0.002 "
                      "(solver.lr 0.001 x 2 / reference batch 1: lr_scaling=linear)")  # fmt: skip
    assert (tmp_path / "rank1.log").read_text() == ""  # only rank 0 speaks


def _stop_worker(rank, world, port, data_dir, save_dir, out, stop_rank, at_call, action):
    """A rank of a 2-process run in which ``stop_rank``'s model calls ``action()`` in its ``at_call``-th forward."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    import fpn.model
    from fpn.engine.trainer import train

    real = fpn.model.build_detector

    def build(cfg, num_classes, **kw):
        model = real(cfg, num_classes, **kw)
        forward, calls = model.forward, [0]

        def patched(*args, **kwargs):
            calls[0] += 1
            if rank == stop_rank and calls[0] == at_call:
                action()
            return forward(*args, **kwargs)

        model.forward = patched
        return model

    fpn.model.build_detector = build
    cfg = C.apply_overrides(C.get_preset("synthetic"), TINY)
    cfg.data.data_dir, cfg.save_dir = str(data_dir), str(save_dir)
    result = train(cfg, progress=False, log=lambda line: None)
    torch.save({"params": dict(result.model.named_parameters()), "iteration": result.iteration,
                "interrupted": result.interrupted, "requeue": result.requeue}, out / f"rank{rank}.pt")  # fmt: skip


def _sigterm():
    signal.raise_signal(signal.SIGTERM)


def test_sigterm_to_one_rank_stops_both_at_the_same_iteration_and_rank_0_saves_once(tmp_path):
    generate(tmp_path / "data" / "synthetic", seed=0, n_train=8, n_test=4)
    # rank 1 alone gets SIGTERM during its 2nd iteration (of 4)
    args = (2, _free_port(), tmp_path / "data", tmp_path / "runs", tmp_path, 1, 2, _sigterm)
    mp.spawn(_stop_worker, args=args, nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    # rank 1 votes to stop at the boundary after iteration 2; the ranks read the vote one boundary later
    assert r0["iteration"] == r1["iteration"] == 3
    assert r0["interrupted"] and r1["interrupted"] and r0["requeue"] and r1["requeue"]
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), name
    run = tmp_path / "runs" / "res18" / "synthetic" / "default"
    assert sorted(p.name for p in run.glob("*.pth")) == ["fpn_1_1_2.pth"]
    ckpt = torch.load(run / "fpn_1_1_2.pth", map_location="cpu", weights_only=False)
    assert (ckpt["iteration"], ckpt["interrupted"], ckpt["mid_epoch"], len(ckpt["rng"])) == (3, True, True, 2)
    assert torch.equal(ckpt["model"]["backbone.conv1.weight"], r0["params"]["backbone.conv1.weight"])
