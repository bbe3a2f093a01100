"""Count the aten operations one call runs: ``count_aten_ops(fn)``, a CPU proxy for CUDA kernel launches.

In eager mode every aten operation that computes something is at least one kernel launch on a GPU (a few are
more, a view none), and the host's cost per launch (~5-10 us of Python, dispatch and launch) is what bounds a
step whose kernels are small. The count does not depend on the machine's load, so a CPU run compares two versions
of a step, and a test can hold a change to fewer operations (``fpn bench --profile``; docs/PERFORMANCE.md).

Counted below autograd (a ``TorchDispatchMode``): the forward's operations, the backward's (autograd runs them
in the same mode) and the optimiser's. Views and metadata-only operations (``view``, ``t``, ``expand``,
``detach``...) launch nothing; they are counted apart.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.is_view or func.overloadpacket in _METADATA:
            self.views += 1
        else:
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


_aten = torch.ops.aten
# no kernel: results that alias their input or only read metadata
_METADATA = {_aten.detach, _aten.lift_fresh, _aten.alias, _aten.sym_size, _aten.sym_stride, _aten.sym_numel,
             _aten.is_same_size, _aten.sym_storage_offset}  # fmt: skip


def count_aten_ops(fn, top: int = 8) -> dict:
    """Run ``fn()`` once under the counter: {"ops": operations that compute (launches on a GPU), "views": views
    and metadata reads (no launch), "top": the ``top`` most frequent operations as [name, count]}."""
    counter = _Counter()
    with counter:
        fn()
    return {"ops": sum(counter.ops.values()), "views": counter.views,
            "top": [[name, n] for name, n in counter.ops.most_common(top)]}  # fmt: skip
