"""``fpn train --preset small``: a small dataset trains at least solver.min_iters iterations, and only the newest
epoch checkpoints stay (tiny synthetic set: 8 images at batch 2, 4 iterations per epoch)."""

import json

import pytest
from tiny_run import train

from fpn.data.synthetic import generate


@pytest.mark.slow
def test_a_small_dataset_trains_more_epochs_keeps_the_newest_checkpoints_and_resume_auto_agrees(tmp_path, capsys):
    generate(tmp_path / "data" / "synthetic", seed=0, n_train=8, n_test=4)
    flags = ("--preset", "small", "--epochs", "1")
    sets = ("eval_at_end=False", "solver.min_iters=10")
    assert train(tmp_path / "data", tmp_path, *flags, sets=sets) == 0
    run = tmp_path / "res18" / "synthetic" / "default"
    out = capsys.readouterr().out.splitlines()
    assert ("small dataset: 4 iterations/epoch x 1 epochs is under solver.min_iters=10: training 3 epochs "
            "(12 iterations); --set solver.min_iters=0 trains --epochs as given") in out
    assert "checkpoints: after every epoch (the newest 2 stay: solver.keep_epoch_checkpoints=2, 0 keeps all)" in out
    assert f"training from epoch 1 step 0: res18 on synthetic (8 classes), 4 iterations/epoch x 3 epochs, device " \
           f"cpu; run folder {run}" in out
    assert out[-1] == (f"training done: 12 iterations; last checkpoint {run / 'fpn_1_3_3.pth'}; the newest 2 epoch "
                       "checkpoints are kept (solver.keep_epoch_checkpoints, 0 keeps all)")  # fmt: skip
    assert sorted(p.name for p in run.glob("*.pth")) == ["fpn_1_2_3.pth", "fpn_1_3_3.pth"]
    assert json.loads((run / "config.json").read_text())["solver"]["epochs"] == 3
    assert json.loads((run / "run.json").read_text())["iters_per_epoch"] == 4

    # the same command again: --resume auto knows the run raised its epochs, so it is done and says no difference
    assert train(tmp_path / "data", tmp_path, *flags, "--resume", "auto", sets=sets) == 0
    out = capsys.readouterr().out
    assert f"--resume auto: {run / 'fpn_1_3_3.pth'} (epoch 3, step 3, iteration 12): all 3 epochs are done" in out
    assert "differs" not in out

    # min_iters 0: exactly --epochs
    assert train(tmp_path / "data", tmp_path, *flags, "--exp-name", "exact", sets=(*sets[:1], "solver.min_iters=0")) == 0
    assert "4 iterations/epoch x 1 epochs" in capsys.readouterr().out
