import random

import numpy as np
import pytest
import torch
from torch import nn

from fpn.config import Config, to_dict
from fpn import checkpoint as ck
from fpn.engine.schedule import build_optimizer, build_scheduler
from fpn.errors import UserError


def _ckpt(**kw):
    net = nn.Linear(3, 2)
    cfg = Config()
    opt = build_optimizer(net, cfg.solver)
    sched = build_scheduler(opt, cfg.solver, 5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    args = dict(epoch=2, step=4, iteration=10, config=to_dict(cfg), classes=("a", "b"), net="res18",
                dataset="synthetic", session=1)
    args.update(kw)
    return net, ck.make_checkpoint(net, opt, sched, scaler, **args)


def test_names_and_run_dir():
    assert ck.checkpoint_name(1, 7, 5010) == "fpn_1_7_5010.pth"
    assert str(ck.run_dir("w", "res101", "pascal_voc", "e")) == "w/res101/pascal_voc/e"
    assert str(ck.run_dir("w", "res18", "/data/my_set/", "e")) == "w/res18/my_set/e"


def test_round_trip_has_documented_keys(tmp_path):
    net, c = _ckpt()
    path = ck.save_checkpoint(c, tmp_path / "x" / "fpn_1_2_4.pth")
    loaded = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "iteration", "config", "classes",
                "net", "dataset", "session", "version"):
        assert key in loaded
    assert (loaded["epoch"], loaded["step"], loaded["iteration"], loaded["classes"]) == (2, 4, 10, ("a", "b"))
    assert loaded["scaler"] == {} and loaded["interrupted"] is False
    assert torch.equal(loaded["model"]["weight"], net.weight)
    assert ck.load_checkpoint(path)["net"] == "res18"
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["fpn_1_2_4.pth"]  # no temporary left behind


def test_bad_files_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="checkpoint file not found"):
        ck.load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="junk.pth: not a readable checkpoint") as e:
        ck.load_checkpoint(tmp_path / "junk.pth")
    assert "\n" not in str(e.value)
    _, c = _ckpt()
    ck.save_checkpoint(c, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.pth: not a readable checkpoint"):
        ck.load_checkpoint(tmp_path / "cut.pth")
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not an fpn checkpoint .missing model"):
        ck.load_checkpoint(tmp_path / "other.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(UserError, match="holds a list"):
        ck.load_checkpoint(tmp_path / "list.pth")


def test_compatibility_checks():
    _, c = _ckpt()
    ck.check_compatible(c, "p", classes=("a", "b"), net="res18")
    with pytest.raises(UserError, match=r"p: checkpoint classes \(2: a, b\) differ from the dataset's \(1: a\)"):
        ck.check_compatible(c, "p", classes=("a",))
    with pytest.raises(UserError, match="p: checkpoint is a res18 network, not res50"):
        ck.check_compatible(c, "p", net="res50")
    with pytest.raises(UserError, match="weights do not fit the model"):
        ck.load_model_state(nn.Linear(4, 2), c, "p")


def test_rng_state_round_trip():
    state = ck.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ck.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_format_1_checkpoint_is_upgraded(tmp_path):
    """Format 1 stored box-head fc1 for (channel, y, x) inputs; loading reorders the weight to (y, x,
    channel) and resuming reorders its optimiser moments, so an old checkpoint computes the same function."""
    from fpn.config import synthetic
    from fpn.model import build_detector

    cfg = synthetic()
    cfg.model.fc_dim = 16
    model = build_detector(cfg, num_classes=3)
    fc1 = model.roi_heads.box_head.fc1.weight  # (16, 64 * 7 * 7)
    opt = build_optimizer(model, cfg.solver)
    fc1.grad = torch.randn_like(fc1)
    opt.step()
    c = ck.make_checkpoint(model, opt, build_scheduler(opt, cfg.solver, 5), None, epoch=1, step=4, iteration=5,
                           config=to_dict(cfg), classes=("a", "b"), net="res18", dataset="synthetic", session=1)

    def to_cyx(w):  # the inverse of the upgrade: what format 1 stored
        return w.reshape(16, 7, 7, 64).permute(0, 3, 1, 2).reshape(16, -1)

    index = next(i for i, p in enumerate(p for g in opt.param_groups for p in g["params"]) if p is fc1)
    old = {**c, "version": 1, "model": dict(c["model"])}
    old["model"][ck.FC1_WEIGHT] = to_cyx(fc1.detach())
    moments = {k: v for k, v in c["optimizer"]["state"][index].items() if torch.is_tensor(v) and v.dim() == 2}
    assert set(moments) == {"exp_avg", "exp_avg_sq"}
    old["optimizer"] = {**c["optimizer"], "state": dict(c["optimizer"]["state"])}
    old["optimizer"]["state"][index] = {k: (to_cyx(v) if k in moments else v) for k, v in c["optimizer"]["state"][index].items()}
    assert not torch.equal(old["model"][ck.FC1_WEIGHT], fc1)
    ck.save_checkpoint(old, tmp_path / "old.pth")

    loaded = ck.load_checkpoint(tmp_path / "old.pth")
    assert loaded["version"] == ck.CHECKPOINT_VERSION and loaded["upgraded_from"] == 1
    assert torch.equal(loaded["model"][ck.FC1_WEIGHT], fc1)
    ck.upgrade_optimizer_state(loaded, opt, model)
    for k, v in moments.items():
        assert torch.equal(loaded["optimizer"]["state"][index][k], v)
    current = ck.load_checkpoint(ck.save_checkpoint(c, tmp_path / "new.pth"))
    assert "upgraded_from" not in current and torch.equal(current["model"][ck.FC1_WEIGHT], fc1)


def test_newest_checkpoint_orders_by_session_epoch_step_and_skips_unreadable_ones(tmp_path):
    for name, kw in [("fpn_1_9_5.pth", {}), ("fpn_1_10_0.pth", dict(interrupted=True)), ("fpn_2_1_3.pth", {})]:
        ck.save_checkpoint(_ckpt(**kw)[1], tmp_path / name)
    (tmp_path / "fpn_1_x_1.pth").write_bytes(b"")  # not a checkpoint name: ignored
    assert [p.name for p in ck.checkpoint_files(tmp_path)] == ["fpn_1_9_5.pth", "fpn_1_10_0.pth", "fpn_2_1_3.pth"]
    assert [p.name for p in ck.checkpoint_files(tmp_path, session=1)] == ["fpn_1_9_5.pth", "fpn_1_10_0.pth"]
    warned = []
    path, found = ck.newest_checkpoint(tmp_path, session=1, warn=warned.append)
    assert path.name == "fpn_1_10_0.pth" and found["interrupted"] and not warned

    # the newest truncated (a node lost while writing), the one before holding weights only: one warning each
    data = (tmp_path / "fpn_2_1_3.pth").read_bytes()
    (tmp_path / "fpn_2_1_3.pth").write_bytes(data[: len(data) // 3])
    torch.save(ck.weights_checkpoint({}, config={}, classes=(), net="res18", dataset="x"), tmp_path / "fpn_2_1_2.pth")
    path, _ = ck.newest_checkpoint(tmp_path, warn=warned.append)
    assert path.name == "fpn_1_10_0.pth"
    assert warned[0].startswith(f"--resume auto: skipped {tmp_path / 'fpn_2_1_3.pth'}: not a readable checkpoint (")
    assert warned[1] == f"--resume auto: skipped {tmp_path / 'fpn_2_1_2.pth'}: holds weights only"
    assert ck.newest_checkpoint(tmp_path / "none") is None


def test_prune_keeps_the_newest_mid_epoch_checkpoints_and_every_epoch_end(tmp_path):
    names = {"fpn_1_1_1.pth": True, "fpn_1_1_3.pth": False, "fpn_1_2_0.pth": True, "fpn_1_2_2.pth": True,
             "fpn_1_2_3.pth": False, "fpn_2_1_0.pth": True}  # name: mid-epoch  # fmt: skip
    for name, mid in names.items():
        ck.save_checkpoint(_ckpt(mid_epoch=mid)[1], tmp_path / name)
    (tmp_path / "fpn_1_1_2.pth").write_bytes(b"truncated")  # unreadable: left alone
    assert ck.prune_mid_epoch(tmp_path, session=1, keep=0) == []
    removed = ck.prune_mid_epoch(tmp_path, session=1, keep=2)
    assert [p.name for p in removed] == ["fpn_1_1_1.pth"]
    left = ["fpn_1_1_2.pth", "fpn_1_1_3.pth", "fpn_1_2_0.pth", "fpn_1_2_2.pth", "fpn_1_2_3.pth", "fpn_2_1_0.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == left
    assert [p.name for p in ck.prune_mid_epoch(tmp_path, session=1, keep=1)] == ["fpn_1_2_0.pth"]
    # a checkpoint from before mid_epoch was saved: interrupted says it
    assert ck.is_mid_epoch({"interrupted": True}) and not ck.is_mid_epoch({"interrupted": False})
