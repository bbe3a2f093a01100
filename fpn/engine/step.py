"""One training iteration, the one ``fpn train`` runs and ``fpn bench --mode train`` times.

``TrainStep(model, optimizer, scaler, device, amp, ...)(*inputs)``: forward under ``autocast`` (the
model's own input handling: a channels-last detector converts its batch itself), the loss dict summed in
float32, ``zero_grad``, the scaled backward, optional gradient clipping (unscaled first), the optimiser
step through the ``GradScaler`` (a no-op pass-through unless fp16), the scaler update and the scheduler
step. Build the optimiser with ``fpn.engine.schedule.build_optimizer`` (fused or not) and the scaler with
``fpn.engine.device.make_scaler``; the trainer and the benchmark both do.

No host synchronisation: the returned loss values stay on the device. (An enabled GradScaler with an
unfused optimiser, i.e. fp16 with SGD, reads its overflow flag on the host inside ``scaler.step``: that
is torch's GradScaler, not this code.)
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from fpn.engine.device import autocast


class TrainStep:
    """Callable: ``step(*inputs) -> (loss names, (L,) float32 detached loss values on the device)``.

    ``model(*inputs)`` must return a dict of scalar losses (ours: ``(images, image_sizes, targets)``;
    torchvision's detectors: ``(images, targets)``). Attributes a caller may read after a call: ``lr``,
    the rate that iteration used (parameter group 0), and ``updating``, set True just before the
    parameter update starts; the caller clears it once it has counted the iteration (the trainer saves no
    checkpoint for an interrupt while it is True).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 device: torch.device, amp: str, scheduler=None, clip_grad_norm: float = 0.0):  # fmt: skip
        if amp == "auto":
            raise ValueError("TrainStep needs a resolved precision (resolve_precision)")
        self.model, self.optimizer, self.scaler, self.scheduler = model, optimizer, scaler, scheduler
        self.device, self.amp, self.clip_grad_norm = device, amp, clip_grad_norm
        self.lr = optimizer.param_groups[0]["lr"]
        self.updating = False

    def __call__(self, *inputs) -> tuple[tuple[str, ...], Tensor]:
        with autocast(self.device, self.amp):
            losses = self.model(*inputs)
        values = torch.stack([v.detach().float() for v in losses.values()])  # (L,)
        loss = sum(v.float() for v in losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.updating = True
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr = self.optimizer.param_groups[0]["lr"]  # the rate this iteration used
        if self.scheduler is not None:
            with warnings.catch_warnings():  # after a step the GradScaler skipped (fp16 overflow), torch warns
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
                self.scheduler.step()
        return tuple(losses), values
