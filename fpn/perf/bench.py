"""Timing of training steps, inference and (via ``fpn.perf.data``) the data loader.

What is timed is described by a ``Config`` (``bench_config``: a preset, by default ``voc07_res101``, with
the flags' overrides): network, width, scale, batch, precision, channels-last, optimiser. A training step
is the trainer's own ``fpn.engine.step.TrainStep`` and scheduler step (``ScheduledStep``) with the optimiser
``build_optimizer`` makes for that solver (fused or not) and the scaler ``make_scaler`` makes for that
precision, so the benchmark times what ``fpn train`` runs. ``--preset synthetic`` therefore times the
synthetic recipe's step as it trains.

The models and their weights come from ``fpn.perf.weights.build_models``: with ``compare="torchvision"``
torchvision's Faster R-CNN FPN and ours run the same trained weights (``weights``, or torchvision's model
pretrained briefly on the bench images), so both detect what a trained detector detects and NMS and RoI work
are what they are in use. Inputs are real images (``fpn.perf.images``: synthetic ones by default, or
``image_dir``'s), resized to ``image_size``: torchvision receives the 0..1 images (its own transform resizes
them on the device, which is how it is used); ours receives the batch its loader would give. Every result
counts detections and proposals per image (:func:`detection_counts`) and says when it is not representative.

Each timing runs ``warmup`` untimed iterations first, then ``iters`` timed ones; on CUDA the clock is read
between device synchronisations, so asynchronous work is counted. Results are plain dicts (images/s, ms per
iteration, peak memory, achieved TFLOP/s from a FlopCounterMode count of one iteration; with ``profile`` the
aten operations of one iteration (``fpn.perf.op_count``: a CPU proxy for kernel launches), the host syncs and, on
CUDA, the kernel profile of ``fpn.perf.cuda_profile``).

Inference also reports batch-1 latency (:func:`bench_latency`): one uint8 image to its detections, through
``fpn.Detector`` (ours: preprocessing, the inference copy of the model), our model exported to ONNX in ONNX
Runtime (``onnx=True``, CPU) and torchvision's model, each timed once per round in turn, so that the load of a
shared machine, which drifts over minutes, weighs on all of them alike.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fpn.perf.weights import BenchModels
from fpn import config as C
from fpn.config import BACKBONES, Config, get_preset
from fpn.perf.images import wrap_labels
from fpn.data.transforms import batch_images, is_normalized, transform_image
from fpn.engine.device import PRECISION_NAMES, autocast, make_scaler, resolve_precision
from fpn.engine.schedule import build_optimizer, build_scheduler, describe_optimizer, step_scheduler
from fpn.engine.step import TrainStep
from fpn.errors import UserError



@dataclass
class BenchInput:
    originals: list[torch.Tensor]  # N x (3, h, w) unnormalised 0..1 images, for torchvision
    original_targets: list[dict]
    images: torch.Tensor  # (N, 3, H, W) the network input the loader would give ours
    image_sizes: list[tuple[int, int]]
    targets: list[dict]  # boxes in resized pixels


def _random_boxes(g: torch.Generator, w: int, h: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 random boxes in a w x h image (training targets for pictures that came without boxes)."""
    xy = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
    wh = 20 + torch.rand(3, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4])
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]))], dim=1)
    return boxes, torch.randint(1, num_classes, (3,), generator=g)


def make_input(samples: list[dict], batch: int, cfg: Config, scale: int, max_size: int, device,
               num_classes: int = 21) -> BenchInput:  # fmt: skip
    """The first ``batch`` samples (``fpn.perf.images``; repeated when there are fewer) as torchvision takes
    them (0..1 images at their size) and as ours takes them (``transform_image`` + ``batch_images`` under ``cfg``'s
    resize rule and normalisation, at ``scale`` / ``max_size``). Labels wrap around into 1..num_classes-1;
    pictures without boxes get 3 random ones."""
    g = torch.Generator().manual_seed(0)
    originals, original_targets, resized, targets = [], [], [], []
    for i in range(batch):
        s = samples[i % len(samples)]
        image = s["image"]
        if s["boxes"] is None:
            boxes, labels = _random_boxes(g, image.shape[-1], image.shape[-2], num_classes)
        else:
            boxes, labels = s["boxes"], wrap_labels(s["labels"], num_classes)
        im, scaled, _ = transform_image(image, boxes, scale, max_size, cfg.data.normalization, resize=cfg.data.resize)
        originals.append((image.float() / 255).to(device))
        original_targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
        resized.append(im)
        targets.append({"boxes": scaled.to(device), "labels": labels.to(device)})
    norm = None if is_normalized(cfg.data.resize) else cfg.data.normalization
    images, sizes = batch_images(resized, norm, cfg.data.size_divisible)
    return BenchInput(originals, original_targets, images.to(device), sizes, targets)


def bench_config(preset: str = "voc07_res101", net: str | None = None, batch: int | None = None,
                 scale: int | None = None, max_size: int | None = None, amp: str | None = None,
                 channels_last: bool | None = None) -> Config:
    """The preset with the given fields replaced (None keeps the preset's); never pretrained weights."""
    cfg = get_preset(preset)
    if net is not None:
        if net not in BACKBONES:
            raise UserError(f"--net {net}: unknown network; choose one of: {', '.join(BACKBONES)}")
        cfg.model.backbone = net
    if batch is not None:
        cfg.solver.batch_size = batch
    if scale is not None:
        cfg.data.train_scales, cfg.data.test_scale = (scale,), scale
    if max_size is not None:
        cfg.data.max_size = max_size
    if amp is not None:
        cfg.runtime.amp = amp
    if channels_last is not None:
        cfg.runtime.channels_last = channels_last
    cfg.model.pretrained = "none"
    return cfg


def num_classes_of(cfg: Config) -> int:
    """Classes + background of the preset's dataset (VOC's 21 unless it is the synthetic one)."""
    from fpn.data.synthetic import SYNTH_CLASSES

    return len(SYNTH_CLASSES) + 1 if cfg.data.dataset == "synthetic" else 21


def build_ours(cfg: Config, num_classes: int = 21, device="cpu") -> torch.nn.Module:
    from fpn.model import build_detector

    return build_detector(cfg, num_classes, load_pretrained=False, device=device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _time(fn, warmup: int, iters: int, device: torch.device) -> tuple[list[float], float]:
    """Seconds of each timed iteration, and of the untimed warm-up in all (torch.compile traces there)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    _sync(device)
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times, warmup_s


def _summary(timed: tuple[list[float], float], images_per_iter: int, flops: float, device: torch.device) -> dict:
    times, warmup_s = timed
    median = statistics.median(times)
    out = {
        "iters": len(times),
        "warmup_s": warmup_s,  # the warm-up iterations in all: with runtime.compile, mostly compiling
        "ms_per_iter": median * 1e3,
        "images_per_s": images_per_iter / median,
        "gflop_per_image": flops / images_per_iter / 1e9,
        "tflops": flops / median / 1e12,
    }
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


class ScheduledStep(TrainStep):
    """The trainer's iteration as one call: ``TrainStep`` and the scheduler step its ``LRSchedule`` hook takes
    after it."""

    def __init__(self, *args, scheduler, **kwargs):
        super().__init__(*args, **kwargs)
        self.scheduler = scheduler

    def __call__(self, *inputs):
        out = super().__call__(*inputs)
        step_scheduler(self.scheduler)
        return out


def make_train_step(model, cfg: Config, amp: str, device, iters: int) -> ScheduledStep:
    """The trainer's step for ``model`` (already on ``device``) with the optimiser, scheduler and scaler
    the trainer builds from ``cfg.solver`` for precision ``amp``."""
    scaler = make_scaler(device, amp)
    optimizer = build_optimizer(model, cfg.solver, grad_scaler=scaler.is_enabled())
    scheduler = build_scheduler(optimizer, cfg.solver, iters_per_epoch=max(1, iters))
    return ScheduledStep(model, optimizer, scaler, device, amp, cfg.solver.clip_grad_norm, scheduler=scheduler)


@torch.no_grad()
def detection_counts(model, inp: BenchInput, impl: str, amp: str, device) -> dict:
    """One eval-mode pass over ``inp``: detections and RPN proposals per image, and whether the result is
    representative (a model that detects nothing times post-processing and RoI work on garbage)."""
    proposals: list[int] = []

    def count(module, args, output):
        if impl == "ours":  # (proposals (N, P, 4), valid (N, P), losses)
            proposals.extend(output[1].sum(1).tolist())
        else:  # ([boxes (P_i, 4)], losses)
            proposals.extend(len(b) for b in output[0])

    was_training = model.training
    model.eval()
    handle = model.rpn.register_forward_hook(count)
    try:
        with autocast(device, amp):
            out = model(inp.images, inp.image_sizes) if impl == "ours" else model(inp.originals)
    finally:
        handle.remove()
        model.train(was_training)
    detections = [len(d["scores"]) for d in out]
    result = {"detections_per_image": detections, "proposals_per_image": proposals,
              "representative": sum(detections) > 0}  # fmt: skip
    if not result["representative"]:
        result["note"] = NOT_REPRESENTATIVE
    return result


NOT_REPRESENTATIVE = ("NOT REPRESENTATIVE: the model returns no detections, so NMS and RoI costs are arbitrary; "
                      "time trained weights (--weights, or --compare torchvision to pretrain them)")  # fmt: skip


def _profile(run, out: dict, device, iters: int) -> None:
    from fpn.perf.cuda_profile import host_syncs, profile_cuda
    from fpn.perf.op_count import count_aten_ops

    out["aten_ops"] = count_aten_ops(run)  # one iteration: a CPU proxy for kernel launches
    out["host_syncs"] = host_syncs(run, device)
    if device.type == "cuda":
        out["profile"] = profile_cuda(run, max(1, min(iters, 5)), device)


def bench_train(model, inp: BenchInput, impl: str, cfg: Config, amp: str, device, warmup: int, iters: int,
                profile: bool = False) -> dict:  # fmt: skip
    """Median time of one training step, ``TrainStep``: forward, loss sum, backward, optimiser step (on a copy of
    ``model``: its weights are left as they are). Detections are counted before, in eval mode."""
    model = copy.deepcopy(model).to(device)
    with _eager(model):
        counts = detection_counts(model, inp, impl, amp, device)
    model.train()
    step = make_train_step(model, cfg, amp, device, warmup + iters + 1 + (7 if profile else 0))
    inputs = (inp.images, inp.image_sizes, inp.targets) if impl == "ours" else (inp.originals, inp.original_targets)

    def run():
        step(*inputs)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with _eager(model):
        flops = _count_flops(run)
    out = _summary(_time(run, warmup, iters, device), len(inp.image_sizes), flops, device)
    out["optimizer"] = describe_optimizer(step.optimizer)
    out.update(counts)
    if profile:
        with _eager(model):
            _profile(run, out, device, iters)
    return out


@torch.no_grad()
def bench_infer(model, inp: BenchInput, impl: str, amp: str, device, warmup: int, iters: int,
                profile: bool = False) -> dict:  # fmt: skip
    """Median time of one batched forward pass in eval mode (post-processing included), with the detections and
    proposals per image."""
    model.to(device).eval()

    def forward():
        with autocast(device, amp):
            if impl == "ours":
                model(inp.images, inp.image_sizes)
            else:
                model(inp.originals)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with _eager(model), _dense_pooling(model) if impl == "ours" else contextlib.nullcontext():
        flops = _count_flops(forward)
    out = _summary(_time(forward, warmup, iters, device), len(inp.image_sizes), flops, device)
    with _eager(model):
        out.update(detection_counts(model, inp, impl, amp, device))
        if profile:
            _profile(forward, out, device, iters)
    return out


@contextlib.contextmanager
def _eager(model):
    """Our model without its ``torch.compile`` functions (``runtime.compile``) while the FLOP and aten-op counters
    watch it: a compiled graph runs under no dispatch mode, and the counters count what eager runs (the same
    operations before fusion)."""
    compiled = getattr(model, "_compiled", None)
    if compiled is not None:
        model._compiled = None
    try:
        yield
    finally:
        if compiled is not None:
            model._compiled = compiled


@contextlib.contextmanager
def _dense_pooling(model):
    """Count FLOPs with torchvision's RoIAlign: the counter would count the CPU's sparse pooling product
    ``A @ F`` as a dense matrix product (about 1000 GFLOP per image at 600 x 800 that are never computed)."""
    from fpn.model.ops.roi_pool import per_level_roi_align

    pooler = model.roi_heads.pooler
    pool, pooler.pool = pooler.pool, per_level_roi_align
    try:
        yield
    finally:
        pooler.pool = pool


AGREE_IOU = 0.9  # a detection of ours and one of torchvision's are the same object: this IoU, the same label
AGREE_MARGIN = 0.05  # detections scoring under the threshold + this may be on one side only (rounding there)


@contextlib.contextmanager
def _exact_fp32():
    """fp32 convolutions and matrix products in full fp32 on CUDA (TF32 off), restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def match_detections(ours: dict, ref: dict, score_thresh: float) -> dict:
    """Ours and torchvision's detections of one image ({"boxes" (n, 4), "scores", "labels"} CPU tensors) matched
    one to one, greedily in torchvision's score order, to the unmatched detection of ours with the same label and
    the highest IoU >= ``AGREE_IOU``. Returns the spread of the matched pairs ("max_box_px", "median_box_px",
    "max_score", "median_score"), "matched", "unmatched" [ours, torchvision], and "unmatched_confident": the
    unmatched ones scoring at least ``score_thresh + AGREE_MARGIN`` (near the threshold, float rounding may put a
    detection on either side; above it, a missing detection is a disagreement). Independent of order."""
    from torchvision.ops import box_iou

    iou = box_iou(ref["boxes"], ours["boxes"]) if len(ref["boxes"]) and len(ours["boxes"]) else torch.zeros(
        (len(ref["boxes"]), len(ours["boxes"])))  # fmt: skip
    iou = iou * (ref["labels"][:, None] == ours["labels"][None, :])
    taken = torch.zeros(len(ours["boxes"]), dtype=torch.bool)
    pairs = []
    for i in torch.argsort(ref["scores"], descending=True, stable=True).tolist():
        row = iou[i].masked_fill(taken, -1.0)
        if row.numel() and row.max() >= AGREE_IOU:
            j = int(row.argmax())
            taken[j] = True
            pairs.append((i, j))
    mi = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    mj = torch.tensor([j for _, j in pairs], dtype=torch.long)
    box_px = (ours["boxes"][mj] - ref["boxes"][mi]).abs().amax(1) if pairs else torch.zeros(0)
    score = (ours["scores"][mj] - ref["scores"][mi]).abs() if pairs else torch.zeros(0)
    left_ref = torch.ones(len(ref["boxes"]), dtype=torch.bool)
    left_ref[mi] = False
    confident = score_thresh + AGREE_MARGIN
    return {"matched": len(pairs), "unmatched": [int((~taken).sum()), int(left_ref.sum())],
            "unmatched_confident": int((ours["scores"][~taken] >= confident).sum() + (ref["scores"][left_ref] >= confident).sum()),
            "max_box_px": float(box_px.max()) if pairs else 0.0,
            "median_box_px": float(box_px.median()) if pairs else 0.0,
            "max_score": float(score.max()) if pairs else 0.0,
            "median_score": float(score.median()) if pairs else 0.0}  # fmt: skip


def agreement(models: BenchModels, image: torch.Tensor, device) -> dict:
    """Ours and torchvision's detections of ``image`` (uint8 (3, H, W)) with the same weights, in fp32 (TF32 off
    on CUDA: its 10-bit products would reorder a briefly trained model's many near-equal scores), at their score
    threshold, matched by IoU and label (``match_detections``): {"detections": [ours, torchvision], the match's
    spread and counts, "labels_equal" (of the matched pairs: true by construction), "ok"}. ok: something detected,
    every detection above the threshold's margin matched, matched boxes within 0.5 px and scores within 0.01."""
    from fpn.api import Detector

    tv = models.torchvision.to(device).eval()
    detector = Detector.from_model(models.ours, models.cfg, models.classes, str(device), "none")
    with _exact_fp32():
        with torch.inference_mode():
            ref = {k: v.cpu() for k, v in tv([image.to(device).float() / 255])[0].items()}
        ours = detector.predict(image)
    mine = {"boxes": torch.from_numpy(ours.boxes).float(), "scores": torch.from_numpy(ours.scores).float(),
            "labels": torch.from_numpy(ours.labels).long()}  # fmt: skip
    out = {"detections": [len(ours), len(ref["scores"])], "tf32": False,
           **match_detections(mine, {**ref, "labels": ref["labels"].long()}, models.cfg.model.score_thresh),
           "labels_equal": True}  # fmt: skip
    out["ok"] = (out["matched"] > 0 and out["unmatched_confident"] == 0 and out["max_box_px"] <= 0.5
                 and out["max_score"] <= 0.01)  # fmt: skip
    return out


def bench_latency(models: BenchModels, image: torch.Tensor, device: torch.device, amp: str, onnx: bool,
                  warmup: int, iters: int) -> dict:  # fmt: skip
    """Batch-1 latency, one uint8 image (3, H, W) -> detections: {impl: {"ms" (median), "ms_min", "precision",
    "iters", "detections", "vs_torchvision": torchvision's ms / this one's}}. Implementations: ours
    (``fpn.Detector``), ours in ONNX Runtime (``onnx``, CPU), torchvision's model (when there is one); every round
    times each once, in turn, so that a shared machine's drifting load weighs on all alike."""
    from fpn.api import Detector
    from fpn.export import export_onnx

    if onnx and device.type != "cpu":
        raise UserError("--onnx: the ONNX model runs in onnxruntime on the CPU; add --device cpu")
    detector = Detector.from_model(models.ours, models.cfg, models.classes, str(device), amp)
    runners = {"ours": lambda: detector.predict(image)}
    precisions = {"ours": PRECISION_NAMES[amp]}
    with tempfile.TemporaryDirectory() as tmp:
        if onnx:
            exported = Detector.from_onnx(export_onnx(models.ours, models.cfg, models.classes, Path(tmp) / "m.onnx"),
                                          threads=torch.get_num_threads())  # fmt: skip
            runners["ours_onnx"], precisions["ours_onnx"] = (lambda: exported.predict(image)), "fp32"
        if models.torchvision is not None:
            tv = models.torchvision.to(device).eval()
            tv_image = image.to(device)

            def run_tv():
                with torch.inference_mode(), autocast(device, amp):
                    return tv([tv_image.float() / 255])[0]["scores"].cpu()  # to the host, as predict does

            runners["torchvision"] = run_tv
            precisions["torchvision"] = PRECISION_NAMES[amp]
        times = {name: [] for name in runners}
        detections = {}
        for i in range(warmup + iters):
            for name, fn in runners.items():
                _sync(device)
                t0 = time.perf_counter()
                result = fn()
                _sync(device)
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
                detections[name] = len(result)
    results = {name: {"ms": statistics.median(t) * 1e3, "ms_min": min(t) * 1e3, "precision": precisions[name],
                      "iters": len(t), "detections": detections[name]} for name, t in times.items()}  # fmt: skip
    if "torchvision" in results:
        for name, r in results.items():
            if name != "torchvision":
                r["vs_torchvision"] = results["torchvision"]["ms"] / r["ms"]  # > 1: faster than torchvision
    for r in results.values():
        if not r["detections"]:
            r["note"] = NOT_REPRESENTATIVE
    return results


def bench_samples(image_dir: str | None, n: int, image_size: tuple[int, int] | None) -> tuple[list[dict], str]:
    """The bench images (``fpn.perf.images``): ``image_dir``'s, else the synthetic dataset's; resized to
    ``image_size`` (w, h) when given."""
    from fpn.perf.images import folder_samples, resize_samples, synthetic_samples

    if image_dir:
        samples, what = folder_samples(image_dir, n)
    else:
        samples, what = synthetic_samples(n), f"{n} synthetic images (fpn.data.synthetic, seed 0), with boxes"
    if image_size is not None:
        samples = resize_samples(samples, image_size)
        what += f", resized to {image_size[0]}x{image_size[1]}"
    return samples, what


def run_benchmarks(cfg: Config, mode: str, device: torch.device, image_size: tuple[int, int] | None = (500, 375),
                   compare: str | None = None, warmup: int = 3, iters: int = 10, onnx: bool = False,
                   weights: str | None = None, image_dir: str | None = None, pretrain_iters: int | None = None,
                   save_weights: str | None = None, profile: bool = False) -> dict:  # fmt: skip
    """Run the requested benchmarks of ``cfg`` (see ``bench_config``) on the models of
    ``fpn.perf.weights.build_models``; returns {"config": ..., "weights": ..., "<impl>/<what>": result dict,
    "ratio/...": x, "latency_bs1": ..., "agreement": ...}."""
    from fpn.perf.weights import build_models

    batch = cfg.solver.batch_size
    cfg.validate()
    precision = resolve_precision(cfg.runtime.amp, device)
    amp = precision.amp
    scale, test_scale, max_size = cfg.data.train_scales[0], cfg.data.test_scale, cfg.data.max_size
    samples, images_what = bench_samples(image_dir, max(8, batch), image_size)
    models = build_models(cfg, num_classes_of(cfg), device, amp, compare, weights, samples, pretrain_iters,
                          save_weights)  # fmt: skip
    ours_cfg, num_classes = models.cfg, len(models.classes) + 1
    results: dict = {"config": {"preset": cfg.preset, "net": ours_cfg.model.backbone,
                                "backbone_width": ours_cfg.model.backbone_width,
                                "fpn_channels": ours_cfg.model.fpn_channels, "batch": batch, "mode": mode,
                                "device": str(device), "amp": amp, "precision": str(precision), "scale": scale,
                                "test_scale": test_scale, "max_size": max_size, "images": images_what,
                                "torch": torch.__version__, **{k: v for k, v in C.to_dict(ours_cfg)["runtime"].items() if k not in ("device", "amp")},
                                "optimizer": cfg.solver.optimizer},
                     "weights": models.weights}  # fmt: skip
    if device.type == "cuda":
        results["config"]["gpu"] = torch.cuda.get_device_name(device)
    impls = {"ours": models.ours}
    if models.torchvision is not None:
        impls["torchvision"] = models.torchvision
    for impl, model in impls.items():
        if mode in ("train", "all"):
            inp = make_input(samples, batch, ours_cfg, scale, max_size, device, num_classes)
            if impl == "torchvision":
                model.transform.min_size, model.transform.max_size = (scale,), max_size
            results[f"{impl}/train_bs{batch}"] = bench_train(model, inp, impl, ours_cfg, amp, device, warmup, iters,
                                                             profile)  # fmt: skip
        if mode in ("infer", "all"):
            test_max = ours_cfg.data.test_size_limit()
            if impl == "torchvision":
                model.transform.min_size, model.transform.max_size = (test_scale,), test_max
            for bs in sorted({1, batch}):
                inp = make_input(samples, bs, ours_cfg, test_scale, test_max, device, num_classes)
                results[f"{impl}/infer_bs{bs}"] = bench_infer(model, inp, impl, amp, device, warmup, iters, profile)
        model.cpu()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if mode in ("infer", "all"):
        results["latency_bs1"] = bench_latency(models, samples[0]["image"], device, amp, onnx, warmup, iters)
        if models.torchvision is not None:
            results["agreement"] = agreement(models, samples[0]["image"], device)
    if models.torchvision is not None:
        for key in [k for k in results if k.startswith("ours/")]:
            what = key.split("/", 1)[1]
            results[f"ratio/{what}"] = results[key]["images_per_s"] / results[f"torchvision/{what}"]["images_per_s"]
    return results


def _counts(r: dict) -> str:
    if "detections_per_image" not in r:
        return ""
    mean = lambda v: sum(v) / max(1, len(v))  # noqa: E731
    return f"{mean(r['detections_per_image']):>9.1f}{mean(r['proposals_per_image']):>10.0f}"


def format_results(results: dict) -> str:
    w = results.get("weights", {})
    rows = [f"weights: {w.get('kind', '?')}" + (f" ({w['source']})" if w.get("source") else "")]
    if "pretrain" in w:
        p = w["pretrain"]
        rows[0] += (f": {p['iterations']} iterations at scale {p['scale']}, batch {p['batch']}, {p['seconds']} s, "
                    f"loss {p['first_loss']:.3f} -> {p['last_loss']:.3f}" if p["iterations"] else ": 0 iterations")
    rows.append(f"images: {results['config'].get('images', '?')}")
    rows.append(f"{'run':<26}{'img/s':>10}{'ms/iter':>10}{'GFLOP/img':>11}{'TFLOP/s':>9}{'peak GiB':>10}"
                f"{'det/img':>9}{'prop/img':>10}")
    notes = []
    for key, r in results.items():
        if not isinstance(r, dict) or "images_per_s" not in r:
            continue
        mem = f"{r['peak_mem_gib']:.2f}" if "peak_mem_gib" in r else "-"
        rows.append(f"{key:<26}{r['images_per_s']:>10.2f}{r['ms_per_iter']:>10.1f}{r['gflop_per_image']:>11.1f}"
                    f"{r['tflops']:>9.2f}{mem:>10}{_counts(r)}")
        if "note" in r:
            notes.append(key)
        if results["config"].get("compile") and key.startswith("ours") and "warmup_s" in r:
            rows.append(f"  warm-up {r['warmup_s']:.1f} s in all (torch.compile {results['config']['compile']} "
                        "compiles there)")
        if "profile" in r:
            p = r["profile"]
            rows.append(f"  GPU kernels {p['gpu_ms_per_iter']:.1f} ms/iter (busy {100 * p['busy']:.0f}%), "
                        f"{p['launches_per_iter']:.0f} launches/iter, {p['syncs_per_iter']:.0f} syncs/iter; top: "
                        + ", ".join(f"{k['name'][:40]} {k['ms_per_iter']:.1f} ms" for k in p["top_kernels"][:3]))
        if "aten_ops" in r:
            a = r["aten_ops"]
            rows.append(f"  aten ops per iteration: {a['ops']} (+{a['views']} views); most: "
                        + ", ".join(f"{name} x{n}" for name, n in a["top"][:5]))
        if "host_syncs" in r:
            h = r["host_syncs"]
            sites = ", ".join(f"{site} x{n}" for site, n in list(h["sites"].items())[:8])
            rows.append(f"  host syncs: {h['per_iter']} per iteration" + (f": {sites}" if sites else ""))
    for key, ratio in results.items():
        if key.startswith("ratio/"):
            rows.append(f"ours / torchvision, {key[6:]}: {ratio:.2f}x")
    if "latency_bs1" in results:
        rows.append("batch-1 latency, one image to its detections (median of interleaved runs):")
        for name, r in results["latency_bs1"].items():
            speed = f"   {r['vs_torchvision']:.2f}x torchvision's speed" if "vs_torchvision" in r else ""
            rows.append(f"  {name:<14}{r['ms']:>9.1f} ms (min {r['ms_min']:.1f}), {r['precision']}, "
                        f"{r['detections']} detections{speed}")
            if "note" in r:
                notes.append(f"latency {name}")
    if "agreement" in results:
        a = results["agreement"]
        rows.append(f"same weights, ours vs torchvision (fp32, one image): {a['detections'][0]} vs "
                    f"{a['detections'][1]} detections, {a['matched']} matched by IoU and label, boxes within "
                    f"{a['max_box_px']:.1e} px (median {a['median_box_px']:.1e}), scores within {a['max_score']:.1e}, "
                    f"unmatched {a['unmatched'][0]} / {a['unmatched'][1]} ({a['unmatched_confident']} above the "
                    f"threshold's margin): "
                    f"{'agree' if a['ok'] else 'nothing to compare' if not max(a['detections']) else 'DISAGREE'}")
    if notes:
        rows.append(f"{', '.join(notes)}: {NOT_REPRESENTATIVE}")
    return "\n".join(rows)
