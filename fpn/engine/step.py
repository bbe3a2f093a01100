"""One training iteration, the one ``fpn train`` runs and ``fpn bench --mode train`` times.

``TrainStep(model, optimizer, scaler, device, amp, ...)(*inputs)``: forward under ``autocast`` (the
model's own input handling: a channels-last detector converts its batch itself), the loss dict summed in
float32, ``zero_grad``, the scaled backward, optional gradient clipping (unscaled first), the optimiser
step through the ``GradScaler`` (a no-op pass-through unless fp16) and the scaler update. The caller steps
the learning-rate schedule (the trainer's ``LRSchedule`` hook, ``fpn bench``'s ``ScheduledStep``: both with
``fpn.engine.schedule.step_scheduler``). Build the optimiser with ``fpn.engine.schedule.build_optimizer``
(fused or not) and the scaler with ``fpn.engine.device.make_scaler``; the trainer and the benchmark both do.

No host synchronisation: the returned loss values stay on the device. (An enabled GradScaler with an
unfused optimiser, i.e. fp16 with SGD, reads its overflow flag on the host inside ``scaler.step``: that
is torch's GradScaler, not this code.)
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor, nn

from fpn.engine.device import autocast
from fpn.engine.schedule import learning_rate


class TrainStep:
    """Callable: ``step(*inputs) -> (loss names, (L,) float32 detached loss values on the device)``.

    ``model(*inputs)`` must return a dict of scalar losses (ours: ``(images, image_sizes, targets)``;
    torchvision's detectors: ``(images, targets)``). ``lr``, read after a call: the rate that iteration
    used (parameter group 0). ``on_update``, if set, is called as the parameter update starts (the trainer
    notes there that an interrupt from then on leaves no consistent state to save).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 device: torch.device, amp: str, clip_grad_norm: float = 0.0):  # fmt: skip
        if amp == "auto":
            raise ValueError("TrainStep needs a resolved precision (resolve_precision)")
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.device, self.amp, self.clip_grad_norm = device, amp, clip_grad_norm
        self.lr = learning_rate(optimizer)
        self.on_update: Callable[[], None] | None = None
        self.autocast_cache = True  # False while a CUDA graph captures (autocast's weight casts are not kept)

    def __call__(self, *inputs) -> tuple[tuple[str, ...], Tensor]:
        names, values = self.forward_backward(*inputs)
        self.update()
        return names, values

    def forward_backward(self, *inputs) -> tuple[tuple[str, ...], Tensor]:
        """Forward, loss sum, backward (and clipping): the gradients, parameters untouched."""
        with autocast(self.device, self.amp), self._no_cast_cache():
            losses = self.model(*inputs)
        values = torch.stack([v.detach().float() for v in losses.values()])  # (L,)
        loss = sum(v.float() for v in losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        return tuple(losses), values

    def update(self) -> None:
        """The parameter update through the GradScaler."""
        if self.on_update is not None:
            self.on_update()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr = learning_rate(self.optimizer)  # the rate this iteration used

    def _no_cast_cache(self):
        """Inside ``autocast``: the same precision without its cache of cast weights (a graph capture's casts
        must be made in the graph), when ``autocast_cache`` is off."""
        kind = torch.device(self.device).type
        if self.autocast_cache or not torch.is_autocast_enabled(kind):
            return contextlib.nullcontext()
        return torch.autocast(kind, dtype=torch.get_autocast_dtype(kind), cache_enabled=False)
