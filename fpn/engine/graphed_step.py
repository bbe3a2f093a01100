"""The training step as CUDA graphs (``runtime.cuda_graphs``): forward, backward and optimiser step captured once
per input shape and replayed, so that the host launches one graph instead of thousands of kernels.

It follows PyTorch's whole-network capture (docs, "CUDA Graphs"): a few eager iterations on a side stream warm
up (cuBLAS handles, Triton's compiles, the anchor cache, the optimiser's state), then one capture into static
input tensors; each later batch of that shape is copied into them and the graph replays. The learning rate is a
device tensor the schedule overwrites in place (``build_optimizer(capturable=True)``), so a replay reads the
current rate; the loss values come back on the device (the trainer reads them at log intervals).

Batches key their graph by their shapes (images, ground-truth slots): the loader's padded shape buckets and
fixed ground-truth count keep them few; past ``max_graphs`` shapes the step runs eagerly. What cannot be
captured runs eagerly from the start, said once: a CPU device, fp16 (the GradScaler skips steps on the host's
word), an optimiser whose step cannot be captured, several processes (DDP); and from a failed capture on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import fields

import torch
from torch import Tensor, nn

from fpn.engine.schedule import capture_problem, learning_rate
from fpn.engine.step import TrainStep
from fpn.structures import GroundTruth, to_device


def capture_blocker(step: TrainStep) -> str | None:
    """Why ``step`` cannot be captured (None: it can)."""
    if torch.device(step.device).type != "cuda":
        return f"the device is {torch.device(step.device).type}, not CUDA"
    if step.scaler.is_enabled():
        return "fp16's GradScaler decides on the host whether to skip a step"
    if isinstance(step.model, nn.parallel.DistributedDataParallel):
        return "DistributedDataParallel is not captured here"
    problem = capture_problem(step.optimizer)
    return None if problem is None else f"the optimiser cannot be captured: {problem}"


class _Graph:
    """One captured step: its static inputs and outputs."""

    def __init__(self, images: Tensor, sizes: Tensor, gt: GroundTruth):
        self.images, self.sizes, self.gt = images.clone(), sizes.clone(), gt.to(images.device)._map(torch.clone)
        self.graph = torch.cuda.CUDAGraph()
        self.names: tuple[str, ...] = ()
        self.values: Tensor | None = None

    def copy_in(self, images: Tensor, sizes: Tensor, gt: GroundTruth) -> None:
        self.images.copy_(images, non_blocking=True)
        self.sizes.copy_(sizes, non_blocking=True)
        for f in fields(self.gt):  # every ground-truth tensor (the graph's key fixed which ones exist)
            static = getattr(self.gt, f.name)
            if static is not None:
                static.copy_(getattr(gt, f.name), non_blocking=True)


class GraphedTrainStep:
    """``TrainStep``'s interface (``step(images, image_sizes, gt) -> (names, values)``, ``lr``, ``on_update``)
    over CUDA graphs; ``warmup`` eager iterations per shape before its capture, at most ``max_graphs`` graphs.
    ``say`` tells once why a step runs eagerly."""

    def __init__(self, step: TrainStep, *, warmup: int = 3, max_graphs: int = 8, say: Callable[[str], None] = print):
        self.step, self.warmup, self.max_graphs, self.say = step, warmup, max_graphs, say
        self.graphs: dict[tuple, _Graph] = {}
        self.seen: dict[tuple, int] = {}  # eager iterations per shape so far
        self.blocker = capture_blocker(step)
        self._said: set[str] = set()
        if self.blocker is not None:
            self._eagerly(self.blocker, "training runs eagerly")

    @property
    def lr(self):
        return self.step.lr

    @property
    def on_update(self):
        return self.step.on_update

    @on_update.setter
    def on_update(self, fn) -> None:
        self.step.on_update = fn

    def _eagerly(self, why: str, what: str) -> None:
        if why not in self._said:
            self._said.add(why)
            self.say(f"runtime.cuda_graphs: {why}; {what}")

    def __call__(self, images: Tensor, image_sizes, gt: GroundTruth) -> tuple[tuple[str, ...], Tensor]:
        if self.blocker is not None:
            return self.step(images, image_sizes, gt)
        device = images.device
        if image_sizes is None:  # the whole padded batch
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        if not isinstance(image_sizes, Tensor):  # (h, w) per image, copied without waiting for the GPU
            image_sizes = torch.tensor(image_sizes, dtype=torch.float32).reshape(-1, 2)
        sizes = to_device(image_sizes.float(), device)
        key = (tuple(images.shape), images.dtype,
               *(tuple(t.shape) if t is not None else None for t in (gt.boxes, gt.crowd_boxes)))  # fmt: skip
        graph = self.graphs.get(key)
        if graph is None:
            if len(self.graphs) >= self.max_graphs:
                self._eagerly(f"more than {self.max_graphs} input shapes (bucket the padded sizes)",
                              "batches of further shapes train eagerly")
                return self.step(images, sizes, gt)
            self.seen[key] = self.seen.get(key, 0) + 1
            if self.seen[key] <= self.warmup:
                return self._side_stream(images, sizes, gt)
            try:
                graph = self.graphs[key] = self._capture(images, sizes, gt)
            except RuntimeError as e:  # something in the step cannot be captured: nothing ran, train eagerly
                first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
                self.blocker = f"the capture failed ({first})"
                self._eagerly(self.blocker, "training runs eagerly")
                torch.cuda.synchronize(device)
                return self.step(images, sizes, gt)
        else:
            graph.copy_in(images, sizes, gt)
        if self.step.on_update is not None:
            self.step.on_update()
        graph.graph.replay()
        self.step.lr = learning_rate(self.step.optimizer)  # before the schedule's next step overwrites it
        return graph.names, graph.values.clone()  # the static output is overwritten by the next replay

    def _side_stream(self, images: Tensor, sizes: Tensor, gt: GroundTruth):
        """An eager step on a side stream (warm-up before a capture, as PyTorch's docs do)."""
        stream = torch.cuda.Stream(images.device)
        stream.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(stream), warnings.catch_warnings():
            # AdamW(capturable=True) warns when it steps outside a capture: these steps are meant to
            warnings.filterwarnings("ignore", "This instance was constructed with capturable=True", UserWarning)
            out = self.step(images, sizes, gt)
        torch.cuda.current_stream(images.device).wait_stream(stream)
        return out

    def _capture(self, images: Tensor, sizes: Tensor, gt: GroundTruth) -> _Graph:
        """Capture forward, backward and optimiser step on static copies of this batch (run by the replay
        that follows: a capture only records)."""
        graph = _Graph(images, sizes, gt)
        step = self.step
        step.optimizer.zero_grad(set_to_none=True)  # the gradients are allocated in the graph's memory
        step.autocast_cache = False
        try:
            with torch.cuda.graph(graph.graph):
                graph.names, graph.values = step.forward_backward(graph.images, graph.sizes, graph.gt)
                step.optimizer.step()  # the scaler is disabled here: its step is the optimiser's
        finally:
            step.autocast_cache = True
        return graph
