"""The small-dataset rule (``solver.min_iters``): epochs raised so a run trains enough iterations."""

import pytest

from fpn import config as C
from fpn.engine.schedule import small_dataset_epochs
from fpn.errors import UserError


@pytest.mark.parametrize("epochs, decay, ipe, min_iters, expected", [
    (1, (), 50, 1600, (32, ())),  # 200 images at batch 4: 32 epochs of 50 reach 1600 exactly
    (1, (), 51, 1600, (32, ())),  # 32 x 51 = 1632: the fewest epochs that reach it
    (1, (), 49, 1600, (33, ())),  # 32 x 49 = 1568 falls short by 32
    (8, (), 50, 1600, (32, ())),  # too few epochs given: raised all the same
    (40, (), 50, 1600, (40, ())),  # enough already: as given
    (1, (), 1600, 1600, (1, ())),  # the synthetic dataset itself: 6400 images, one epoch, unchanged
    (1, (), 1601, 1600, (1, ())),
    (12, (10,), 100, 2400, (24, (20,))),  # the VOC step schedule doubled: decay after 20 of 24
    (12, (8, 11), 100, 1300, (13, (9, 12))),  # 8 x 13/12 = 8.67 -> 9, 11 x 13/12 = 11.9 -> 12
    (2, (1,), 10, 50, (5, (3,))),  # 1 x 5/2 = 2.5: halves round up
    (12, (10,), 1, 0, (12, (10,))),  # min_iters 0: epochs as given
    (3, (1, 2), 1, 4, (4, (1, 3))),  # 1.33 -> 1, 2.67 -> 3
])  # fmt: skip
def test_epochs_are_the_fewest_that_reach_min_iters_and_decay_epochs_scale_with_them(
    epochs, decay, ipe, min_iters, expected
):
    assert small_dataset_epochs(epochs, decay, ipe, min_iters) == expected
    # applied to its own result nothing changes (a resumed run keeps its schedule)
    assert small_dataset_epochs(*expected, ipe, min_iters) == expected


def test_the_small_preset_is_the_synthetic_recipe_with_a_minimum_length():
    small, synthetic = C.get_preset("small"), C.get_preset("synthetic")
    assert (small.preset, small.solver.min_iters, synthetic.solver.min_iters) == ("small", 1600, 0)
    small.preset = synthetic.preset
    small.solver.min_iters = 0
    assert small == synthetic
    assert synthetic.solver.keep_epoch_checkpoints == 2 and C.get_preset("voc07_res101").solver.keep_epoch_checkpoints == 0


@pytest.mark.parametrize("field, message", [
    ("min_iters", "solver.min_iters -1: must be 0 (epochs as given) or more"),
    ("keep_epoch_checkpoints", "solver.keep_epoch_checkpoints -1: must be 0 (keep all) or more"),
])
def test_negative_counts_are_refused_naming_the_key(field, message):
    cfg = C.get_preset("small")
    setattr(cfg.solver, field, -1)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cfg.validate()
