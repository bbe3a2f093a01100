"""Training, inference and their plumbing.

- ``trainer``: the training loop (``train``), checkpoints every epoch (and every N iterations / minutes),
  resume, Ctrl-C and SIGTERM (stop, save, exit 75), divergence and out-of-memory stops.
- ``step``: one training iteration (``TrainStep``), shared by the trainer and ``fpn bench``.
- ``schedule``: SGD / AdamW parameter groups (fused where safe), lr scaling, the per-iteration schedule.
- ``logger``: metrics.jsonl, TensorBoard scalars and console lines.
- ``inference``: batched prediction over a test split and its VOC evaluation.
- ``distributed``: DDP set-up from torchrun's environment; ``Vote``, the ranks' per-iteration agreement.
- ``device``: device selection, mixed precision, the out-of-memory error.
- ``prepare``: config checks (training from scratch with frozen BatchNorm refused), seeding, dataset
  resolution (synthetic data generated on demand, a complete one used as it is).
"""
