"""Tiny synthetic training runs shared by the command tests (imported as a plain module, like
tests/model/detector_helpers.py)."""

from fpn.cli import main

# 128 px images, no flip, small RPN/RoI batches: 8 images at batch 2 = 4 iterations per epoch
TINY = ["data.synth_train=8", "data.synth_test=4", "data.train_scales=128", "data.test_scale=128", "data.max_size=160", "data.flip=False",
        "model.rpn_batch_per_image=64", "model.roi_batch_per_image=32", "solver.warmup_iters=2"]  # fmt: skip


def train(data_dir, save_dir, *flags, sets=("eval_at_end=False",)) -> int:
    """``fpn train`` on the synthetic data in ``data_dir`` with the TINY settings; returns the exit code."""
    return main(["train", "--dataset", "synthetic", "--data-dir", str(data_dir), "--save-dir", str(save_dir),
                 "--bs", "2", "--workers", "0", "--log-interval", "2", "--no-progress", *flags,
                 "--set", *TINY, *sets])  # fmt: skip
