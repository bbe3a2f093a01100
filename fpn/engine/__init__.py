"""Training, inference and their plumbing.

- ``trainer``: the training loop (``train``), checkpoints every epoch, resume, Ctrl-C, divergence stop.
- ``step``: one training iteration (``TrainStep``), shared by the trainer and ``fpn bench``.
- ``checkpoint``: the checkpoint dict, its file name and run folder, loading with one-line errors.
- ``schedule``: SGD / AdamW parameter groups (fused where safe), lr scaling, the per-iteration schedule.
- ``logger``: metrics.jsonl, TensorBoard scalars and console lines.
- ``inference``: batched prediction over a test split and its VOC evaluation.
- ``distributed``: DDP set-up from torchrun's environment.
- ``device``: device selection and mixed precision.
- ``prepare``: config checks, seeding, dataset resolution (synthetic data generated on demand).
- ``visualize``: drawing detections, detections as JSON.
- ``seed_compat``: helpers of the seed-compatible root scripts.
"""
