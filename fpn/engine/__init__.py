"""Training, inference and their plumbing.

- ``trainer``: the training loop (``Trainer``: epochs, iterations, hook events, stops and interrupts);
  ``train`` re-exported from ``run``.
- ``hooks``: the loop's policies: the lr schedule, the non-finite guard, Ctrl-C and SIGTERM (stop, save, exit
  75), the metrics writer, checkpoints every epoch (and every N iterations / minutes), the evaluation at the end.
- ``run``: a training run's set-up (``train``: config checks, data, model, optimiser, resume, ``--init``).
- ``step``: one training iteration (``TrainStep``), shared by the trainer and ``fpn bench``.
- ``schedule``: SGD / AdamW parameter groups (fused where safe), lr scaling, the per-iteration schedule.
- ``logger``: metrics.jsonl, TensorBoard scalars and console lines.
- ``inference``: batched prediction over a test split and its VOC evaluation.
- ``distributed``: DDP set-up from torchrun's environment; ``Vote``, the ranks' per-iteration agreement.
- ``device``: device selection, mixed precision, the out-of-memory error.
- ``prepare``: config checks (training from scratch with frozen BatchNorm refused), seeding, dataset
  resolution (synthetic data generated on demand, a complete one used as it is).
"""
