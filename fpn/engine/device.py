"""Device selection and mixed precision.

``resolve_device("auto")`` is CUDA when available, else the CPU; ``cuda:N`` also makes N the current device (outside
torchrun nothing else would: Triton kernels and ``torch.cuda`` calls without a device would run on device 0).
``prepare_for_speed(device)`` turns on cuDNN's autotuner for training and the bench (their inputs come in a few
padded sizes, each tuned once); inference on images of every size leaves it off.

Precision (``--amp`` / ``runtime.amp``): ``auto`` | ``none`` (fp32) | ``bf16`` | ``fp16``.
``resolve_precision(amp, device)`` turns a request into the precision a run uses, with the reason:

* ``auto`` on a CPU: bf16 where the CPU computes bf16 natively (AMX or AVX512-BF16, and neither
  ``ATEN_CPU_CAPABILITY`` nor ``ONEDNN_MAX_CPU_ISA`` caps torch below it), else fp32: elsewhere bf16 is
  emulated and about 10x slower than fp32 (measured in docs/PERFORMANCE.md);
* ``auto`` on CUDA: bf16 where the card supports it natively (Ampere and newer), else fp16 with a GradScaler;
* an explicit ``bf16`` where it is not native is a one-line ``UserError`` naming the alternative; an
  explicit ``fp16`` on a CPU is allowed (tests use it) and is slow there.

``autocast(device, amp)`` wraps the forward pass; losses are summed and backpropagated in fp32. fp16
needs a ``GradScaler`` (``make_scaler``) against gradient underflow; bf16 and fp32 do not.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch

from fpn.config import AMP_MODES
from fpn.errors import OutOfMemory, UserError

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_NAMES = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}


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
        if device.index is not None:
            torch.cuda.set_device(device)
    return device


def prepare_for_speed(device: torch.device) -> None:
    """On CUDA: cuDNN picks the fastest convolution algorithm per input shape (timed on first use of a shape), for
    runs whose shapes repeat (training, the bench). Nothing on a CPU."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True


def check_amp(amp: str, flag: str = "--amp") -> str:
    if amp not in AMP_MODES:
        raise UserError(f"{flag} {amp}: expected one of {', '.join(AMP_MODES)}")
    return amp


@dataclass(frozen=True)
class Precision:
    """What a run computes in: ``amp`` is ``none`` (fp32), ``bf16`` or ``fp16``; ``reason`` says why."""

    amp: str
    reason: str

    @property
    def name(self) -> str:
        return PRECISION_NAMES[self.amp]

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


@functools.lru_cache(maxsize=None)
def cpu_bf16_support() -> tuple[bool, str]:
    """(native, description) for bf16 on this CPU, as torch will actually run it."""
    cpu = getattr(torch, "cpu", None)

    def flag(name: str) -> bool:
        fn = getattr(cpu, name, None)
        try:
            return bool(fn()) if fn is not None else False
        except Exception:  # an older torch without the probe
            return False

    amx, avx512_bf16 = flag("_is_amx_tile_supported"), flag("_is_avx512_bf16_supported")
    if not (amx or avx512_bf16):
        return False, "CPU without native bf16"
    hw = "AMX" if amx else "AVX512-BF16"
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    if not capability.startswith("AVX512"):  # ATEN_CPU_CAPABILITY=avx2, or a build without AVX512 kernels
        return False, f"CPU has {hw} but torch runs {capability} kernels"
    onednn_isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    if onednn_isa != "ALL" and "BF16" not in onednn_isa and "AMX" not in onednn_isa:
        return False, f"CPU has {hw} but ONEDNN_MAX_CPU_ISA={onednn_isa}"
    return True, f"CPU with {hw}"


def _cuda_bf16_support(device: torch.device) -> tuple[bool, str]:
    name = torch.cuda.get_device_name(device)
    major, minor = torch.cuda.get_device_capability(device)
    native = major >= 8
    return native, f"{name}, compute capability {major}.{minor}{'' if native else ': no native bf16'}"


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """(native, description) of bf16 on ``device``."""
    if device.type == "cuda":
        return _cuda_bf16_support(device)
    return cpu_bf16_support()


def resolve_precision(amp: str, device: torch.device, flag: str = "--amp") -> Precision:
    """The precision ``amp`` means on ``device`` (see the module docstring); UserError for bf16 where it
    is not native."""
    check_amp(amp, flag)
    device = torch.device(device)
    if amp == "none":
        return Precision("none", "asked for")
    if amp == "fp16":
        return Precision("fp16", "asked for; with a GradScaler in training")
    native, what = bf16_support(device)
    if amp == "bf16":
        if not native:
            other = "fp16" if device.type == "cuda" else "none (fp32)"
            raise UserError(f"{flag} bf16: {what}, bf16 would be emulated and slow; use {flag} auto or {other}")
        return Precision("bf16", f"asked for; {what}")
    if native:
        return Precision("bf16", what)
    if device.type == "cuda":
        return Precision("fp16", f"{what}; with a GradScaler in training")
    return Precision("none", what)


# what running out of device memory raises: torch.OutOfMemoryError (torch >= 2.5), torch.cuda.OutOfMemoryError before
OUT_OF_MEMORY = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError)


def out_of_memory(device, step: str, batch: str, scale: int, max_size: int, precision: Precision,
                  size_keys: tuple[str, str], then: str = "") -> OutOfMemory:  # fmt: skip
    """The one-line error for an ``OUT_OF_MEMORY`` in ``step`` (e.g. "training step (epoch 2, step 31)"):
    what it held (``batch``, images up to ``scale`` x ``max_size``, the precision) and what to change: the
    batch, the image size (``size_keys``: the scale and max-size config keys), fp32 -> bf16 on a GPU; ``then`` ends it."""
    smaller = f"{size_keys[1]}={_smaller(max_size)} {size_keys[0]}={_smaller(scale)}"
    fixes = ["a smaller --bs", f"smaller images (--set {smaller})"]
    if precision.amp == "none" and str(device).startswith("cuda"):
        fixes.append("--amp bf16 (fp16 on a GPU without bf16)")
    elif precision.amp == "none" and cpu_bf16_support()[0]:  # a CPU without native bf16 refuses --amp bf16
        fixes.append("--amp bf16")
    return OutOfMemory(
        f"out of memory on {device} in the {step}: batch {batch}, images up to {scale} x {max_size} px "
        f"({', '.join(size_keys)}), precision {precision.name}; try {', '.join(fixes[:-1])} or {fixes[-1]}{then}"
    )


def test_out_of_memory(device, step: str, batch: int, data, precision: Precision, then: str = "") -> OutOfMemory:
    """``out_of_memory`` of a test step (inference) of ``batch`` images at ``data``'s (a DataConfig) test size."""
    return out_of_memory(device, step, str(batch), data.test_scale, data.test_size_limit(), precision,
                         ("data.test_scale", "data.test_max_size"), then)  # fmt: skip


def _smaller(size: int) -> int:
    return max(32, int(size) * 4 // 5 // 32 * 32)  # ~80%, a multiple of 32


def autocast(device: torch.device, amp: str):
    """Context manager for the forward pass: autocast to ``amp``'s dtype (``auto`` is resolved for
    ``device``), or nothing for fp32."""
    if check_amp(amp) == "auto":
        amp = resolve_precision(amp, device).amp
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_AMP_DTYPES[amp])


def make_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (disabled scalers pass losses and steps through);
    ``amp`` must already be resolved."""
    if amp == "auto":
        raise ValueError("make_scaler needs a resolved precision (resolve_precision)")
    return torch.amp.GradScaler(torch.device(device).type, enabled=(amp == "fp16"))
