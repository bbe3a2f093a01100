"""Device selection and mixed precision.

``resolve_device("auto")`` is CUDA when available, else the CPU. ``autocast(device, amp)`` wraps the forward
pass: ``bf16`` and ``fp16`` run it under ``torch.autocast``; the losses are summed and backpropagated in fp32.
``fp16`` needs a ``GradScaler`` (``make_scaler``) against gradient underflow; ``bf16`` does not.
"""

from __future__ import annotations

import contextlib

import torch

from fpn.errors import UserError

AMP_MODES = ("none", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a torch.device; UserError when CUDA is asked for but absent."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{flag} {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"{flag} {name}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{flag} {name}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def check_amp(amp: str, flag: str = "--amp") -> str:
    if amp not in AMP_MODES:
        raise UserError(f"{flag} {amp}: expected one of {', '.join(AMP_MODES)}")
    return amp


def autocast(device: torch.device, amp: str):
    """Context manager for the forward pass: autocast to ``amp``'s dtype, or nothing when amp is ``none``."""
    if check_amp(amp) == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp])


def make_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (disabled scalers pass losses and steps through)."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))
