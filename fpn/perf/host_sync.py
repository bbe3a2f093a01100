"""Count, on any device, the operations that make the host wait for a GPU: ``count_host_syncs()``.

On CUDA the host runs ahead of the GPU, queueing kernels; an operation whose result the host must see stops it
until the GPU has caught up (``torch.cuda.set_sync_debug_mode`` reports those on a GPU). Which operations those
are does not depend on the device, so a CPU run can count them and a test can hold the training step and the
inference batch to a ceiling (docs/PERFORMANCE.md, "Host syncs"):

* scalar reads: ``.item()``, ``int(t)``, ``float(t)``, ``bool(t)`` (``aten._local_scalar_dense``), ``torch.equal``;
* data-dependent output sizes: ``nonzero`` (also ``torch.where(cond)``), boolean-mask indexing and assignment,
  ``masked_select``, ``unique``, ``bincount`` (CUDA reads the maximum), ``repeat_interleave`` without
  ``output_size``, torchvision's ``nms``;
* whole tensors read on the host: ``.tolist()``, ``.numpy()``, ``.cpu()``;
* ``torch.tensor(data, device=...)`` / ``torch.as_tensor(data, device=...)`` from Python data: on CUDA a copy
  from pageable memory that waits for the queue (``fpn.structures.to_device`` copies without waiting).

Each sync is recorded with the innermost source line of this project (or of torchvision) that caused it.
What comes out of a read (``.cpu()``, ``.numpy()``, ``.tolist()``) is on the host: work on it, and on what is
computed from it alone, waits for nothing and is not counted, also when every tensor is on a CPU.
Diagnostics only: the mode slows every operation down a little.
"""

from __future__ import annotations

import contextlib
import functools
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

_PACKAGE = Path(__file__).resolve().parents[1]  # .../fpn
_COUNTERS = tuple(f"{_PACKAGE}/perf/{name}" for name in ("host_sync.py", "cuda_profile.py"))  # never the cause

_aten = torch.ops.aten
_SYNCING = {
    _aten._local_scalar_dense.default: "scalar read",
    _aten.equal.default: "scalar read",
    _aten.is_nonzero.default: "scalar read",
    _aten.nonzero.default: "nonzero",
    _aten.masked_select.default: "masked_select",
    _aten._unique2.default: "unique",
    _aten.unique_dim.default: "unique",
    _aten.unique_consecutive.default: "unique",
    _aten.bincount.default: "bincount",
}


def _data_dependent(func, args, kwargs) -> str | None:
    """The reason an op with these arguments waits for the GPU, or None."""
    if func in _SYNCING:
        return _SYNCING[func]
    packet = func.overloadpacket
    if packet in (_aten.index, _aten.index_put, _aten.index_put_, _aten._index_put_impl_):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(i is not None and i.dtype == torch.bool for i in indices):
            return "boolean mask index"
    if packet is _aten.repeat_interleave and isinstance(args[0], torch.Tensor) and len(args) == 1:
        if kwargs.get("output_size") is None:
            return "repeat_interleave without output_size"
    if str(packet) == "torchvision.nms":
        return "nms"
    return None


@dataclass
class HostSyncs:
    """What ``count_host_syncs`` saw: ``total`` and ``by_site`` {"file:line (reason)": count}."""

    by_site: Counter = field(default_factory=Counter)
    # tensors known to be on the host (read from the "device", or computed from such tensors alone), by storage;
    # kept alive while counting, so that no other tensor can take over their memory (and their mark)
    _host: dict = field(default_factory=dict, repr=False)

    def is_host(self, t) -> bool:
        return _dense(t) and t.untyped_storage().data_ptr() in self._host

    def mark_host(self, t) -> None:
        if _dense(t) and t.device.type == "cpu" and t.untyped_storage().nbytes():
            self._host[t.untyped_storage().data_ptr()] = t

    @property
    def total(self) -> int:
        return sum(self.by_site.values())

    def add(self, reason: str) -> None:
        self.by_site[f"{_call_site()} ({reason})"] += 1

    def describe(self) -> str:
        return ", ".join(f"{site} x{n}" for site, n in self.by_site.most_common()) or "none"


def _dense(t) -> bool:
    """A tensor with one storage (sparse tensors have none to look up)."""
    return isinstance(t, torch.Tensor) and t.layout == torch.strided


def _call_site() -> str:
    return project_site(traceback.extract_stack()[:-3])


def project_site(stack: list[traceback.FrameSummary]) -> str:
    """The innermost frame of ``stack`` in this project (fpn/, scripts, tests) or torchvision: 'path:line'."""
    for frame in reversed(stack):
        name = frame.filename.replace("\\", "/")
        if name.startswith(_COUNTERS):
            continue
        if name.startswith(str(_PACKAGE) + "/"):
            return f"{name[len(str(_PACKAGE.parent)) + 1:]}:{frame.lineno}"
        if "/torchvision/" in name:
            return f"{name[name.index('/torchvision/') + 1:]}:{frame.lineno}"
        if "/site-packages/" in name or "/dist-packages/" in name:
            continue  # torch's own frames, also when a virtualenv sits inside the checkout
        if name.startswith(str(_PACKAGE.parent) + "/"):  # tests/, scripts/
            return f"{name[len(str(_PACKAGE.parent)) + 1:]}:{frame.lineno}"
    return "?"


class _Counter(TorchDispatchMode):
    def __init__(self, syncs: HostSyncs):
        super().__init__()
        self.syncs = syncs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_host = bool(inputs) and all(self.syncs.is_host(t) for t in inputs)
        if not on_host:
            reason = _data_dependent(func, args, kwargs)
            if reason is not None:
                self.syncs.add(reason)
        out = func(*args, **kwargs)
        if on_host:  # computed from host tensors alone: on the host too
            for t in pytree.tree_leaves(out):
                self.syncs.mark_host(t)
        return out


def _counting(syncs: HostSyncs, reason: str, method):
    """A tensor method that reads the tensor on the host: counted unless the tensor is there already."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not syncs.is_host(self):
            syncs.add(reason)
        out = method(self, *args, **kwargs)
        if out is self:  # .cpu() of a CPU tensor: a copy, so that the "device" tensor keeps being one
            out = out.clone()
        syncs.mark_host(out)
        return out

    return wrapper


def _counting_factory(syncs: HostSyncs, name: str, factory):
    @functools.wraps(factory)
    def wrapper(data, *args, **kwargs):
        if kwargs.get("device") is not None and not isinstance(data, torch.Tensor):
            syncs.add(f"torch.{name}(..., device=...)")
        return factory(data, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def count_host_syncs():
    """``with count_host_syncs() as syncs: ...`` then ``syncs.total``, ``syncs.describe()``. Not thread-safe: it
    patches ``torch.Tensor.tolist/numpy/cpu`` and ``torch.tensor/as_tensor`` while active."""
    syncs = HostSyncs()
    patched = [(torch.Tensor, name, _counting(syncs, f".{name}()", getattr(torch.Tensor, name)))
               for name in ("tolist", "numpy", "cpu")]  # fmt: skip
    patched += [(torch, name, _counting_factory(syncs, name, getattr(torch, name))) for name in ("tensor", "as_tensor")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patched]
    try:
        for owner, name, wrapper in patched:
            setattr(owner, name, wrapper)
        with _Counter(syncs):
            yield syncs
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
