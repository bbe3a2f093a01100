"""Timing of training steps, inference and (via ``fpn.data.bench``) the data loader.

What is timed is described by a ``Config`` (``bench_config``: a preset, by default ``voc07_res101``, with
the flags' overrides): network, width, scale, batch, precision, channels-last, optimiser. A training step
is the trainer's own ``fpn.engine.step.TrainStep`` with the optimiser ``build_optimizer`` makes for that
solver (fused or not) and the scaler ``make_scaler`` makes for that precision, so the benchmark times what
``fpn train`` runs. ``--preset synthetic`` therefore times the synthetic recipe's step as it trains.

Inputs are VOC-sized: ``num`` random images of ``image_size`` (w, h) pixels with a few boxes each, resized
to ``scale`` / ``max_size`` exactly as the data loader does. Each timing runs ``warmup`` untimed
iterations first, then ``iters`` timed ones; on CUDA the clock is read between device synchronisations,
so asynchronous work is counted. Results are plain dicts (images/s, ms per iteration, peak memory,
achieved TFLOP/s from a FlopCounterMode count of one iteration).

``compare="torchvision"`` builds torchvision's Faster R-CNN FPN with the same ResNet depth, input size,
batch and precision. It receives the original-size images (its own transform resizes them on the device,
which is how it is used); ours receives the batch the loader would give (already resized on the loader's
CPU workers).

Inference also reports batch-1 latency (:func:`bench_latency`): one uint8 image to its detections, through
``fpn.Detector`` (ours: preprocessing, the inference copy of the model), our model exported to ONNX in ONNX
Runtime (``onnx=True``, CPU) and torchvision's model, each timed once per round in turn, so that the load of a
shared machine, which drifts over minutes, weighs on all of them alike.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fpn.config import Config, get_preset
from fpn.data.transforms import resize_factor, resized_size
from fpn.engine.device import PRECISION_NAMES, autocast, make_scaler, resolve_precision
from fpn.engine.schedule import build_optimizer, build_scheduler, describe_optimizer
from fpn.engine.step import TrainStep
from fpn.errors import UserError

NETS = {"res18": 18, "res34": 34, "res50": 50, "res101": 101, "res152": 152}


@dataclass
class BenchInput:
    originals: list[torch.Tensor]  # N x (3, h, w) unnormalised 0..1 images, for torchvision
    original_targets: list[dict]
    images: torch.Tensor  # (N, 3, H, W) padded, resized batch, for ours
    image_sizes: list[tuple[int, int]]
    targets: list[dict]  # boxes in resized pixels


def make_input(batch: int, image_size: tuple[int, int], scale: int, max_size: int, device, seed: int = 0,
               size_divisible: int = 32, num_classes: int = 21) -> BenchInput:
    """A reproducible batch: random images with 3 random boxes each (labels in 1..num_classes-1), also
    resized like the loader does."""
    g = torch.Generator().manual_seed(seed)
    w, h = image_size
    f = resize_factor(h, w, scale, max_size)
    rh, rw = resized_size(h, w, f)
    ph, pw = (math.ceil(v / size_divisible) * size_divisible for v in (rh, rw))
    originals, original_targets, targets = [], [], []
    images = torch.zeros(batch, 3, ph, pw)
    for i in range(batch):
        img = torch.rand(3, h, w, generator=g)
        xy = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 20 + torch.rand(3, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4])
        boxes = torch.cat([xy, xy + wh], dim=1)
        labels = torch.randint(1, num_classes, (3,), generator=g)
        originals.append(img.to(device))
        original_targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
        targets.append({"boxes": (boxes * f).to(device), "labels": labels.to(device)})
        images[i, :, :rh, :rw] = torch.nn.functional.interpolate(img[None], size=(rh, rw), mode="bilinear")[0]
    return BenchInput(originals, original_targets, images.to(device), [(rh, rw)] * batch, targets)


def bench_config(preset: str = "voc07_res101", net: str | None = None, batch: int | None = None,
                 scale: int | None = None, max_size: int | None = None, amp: str | None = None,
                 channels_last: bool | None = None) -> Config:
    """The preset with the given fields replaced (None keeps the preset's); never pretrained weights."""
    cfg = get_preset(preset)
    if net is not None:
        if net not in NETS:
            raise UserError(f"--net {net}: unknown network; choose one of: {', '.join(NETS)}")
        cfg.model.backbone = net
    if batch is not None:
        cfg.solver.batch_size = batch
    if scale is not None:
        cfg.data.train_scales, cfg.data.test_scale = (scale,), scale
    if max_size is not None:
        cfg.data.max_size = max_size
    if amp is not None:
        cfg.solver.amp = amp
    if channels_last is not None:
        cfg.model.channels_last = channels_last
    cfg.model.pretrained = "none"
    return cfg


def num_classes_of(cfg: Config) -> int:
    """Classes + background of the preset's dataset (VOC's 21 unless it is the synthetic one)."""
    from fpn.data.synthetic import SYNTH_CLASSES

    return len(SYNTH_CLASSES) + 1 if cfg.data.dataset == "synthetic" else 21


def build_ours(cfg: Config, num_classes: int = 21) -> torch.nn.Module:
    from fpn.model import build_detector

    return build_detector(cfg, num_classes, load_pretrained=False)


def build_torchvision(net: str, scale: int, max_size: int, num_classes: int = 21) -> torch.nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name=f"resnet{NETS[net]}", weights=None, trainable_layers=3)
    return FasterRCNN(backbone, num_classes=num_classes, min_size=scale, max_size=max_size)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _time(fn, warmup: int, iters: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _summary(times: list[float], images_per_iter: int, flops: float, device: torch.device) -> dict:
    median = statistics.median(times)
    out = {
        "iters": len(times),
        "ms_per_iter": median * 1e3,
        "images_per_s": images_per_iter / median,
        "gflop_per_image": flops / images_per_iter / 1e9,
        "tflops": flops / median / 1e12,
    }
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def make_train_step(model, cfg: Config, amp: str, device, iters: int) -> TrainStep:
    """The trainer's step for ``model`` (already on ``device``) with the optimiser, scheduler and scaler
    the trainer builds from ``cfg.solver`` for precision ``amp``."""
    scaler = make_scaler(device, amp)
    optimizer = build_optimizer(model, cfg.solver, grad_scaler=scaler.is_enabled())
    scheduler = build_scheduler(optimizer, cfg.solver, iters_per_epoch=max(1, iters))
    return TrainStep(model, optimizer, scaler, device, amp, scheduler, cfg.solver.clip_grad_norm)


def bench_train(model, inp: BenchInput, impl: str, cfg: Config, amp: str, device, warmup: int, iters: int) -> dict:
    """Median time of one training step, ``TrainStep``: forward, loss sum, backward, optimiser step."""
    model.to(device).train()
    step = make_train_step(model, cfg, amp, device, warmup + iters + 1)
    inputs = (inp.images, inp.image_sizes, inp.targets) if impl == "ours" else (inp.originals, inp.original_targets)

    def run():
        step(*inputs)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    flops = _count_flops(run)
    out = _summary(_time(run, warmup, iters, device), len(inp.image_sizes), flops, device)
    out["optimizer"] = describe_optimizer(step.optimizer)
    return out


@torch.no_grad()
def bench_infer(model, inp: BenchInput, impl: str, amp: str, device, warmup: int, iters: int) -> dict:
    """Median time of one batched forward pass in eval mode (post-processing included)."""
    model.to(device).eval()

    def forward():
        with autocast(device, amp):
            if impl == "ours":
                model(inp.images, inp.image_sizes)
            else:
                model(inp.originals)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with _dense_pooling(model) if impl == "ours" else contextlib.nullcontext():
        flops = _count_flops(forward)
    return _summary(_time(forward, warmup, iters, device), len(inp.image_sizes), flops, device)


@contextlib.contextmanager
def _dense_pooling(model):
    """Count FLOPs with torchvision's RoIAlign: the counter would count the CPU's sparse pooling product
    ``A @ F`` as a dense matrix product (about 1000 GFLOP per image at 600 x 800 that are never computed)."""
    pooler = model.roi_heads.pooler
    impl, pooler.impl = pooler.impl, "torchvision"
    try:
        yield
    finally:
        pooler.impl = impl


def _same_weights_detector(tv: torch.nn.Module, scale: int, max_size: int, device, amp: str, tmp: Path,
                           overrides: tuple[str, ...] = ()):
    """Our model with torchvision's weights (``fpn convert torchvision``'s mapping and conventions): the same
    detections as ``tv``. Returns (the bare model, its config, the Detector running it)."""
    from fpn.api import Detector
    from fpn.engine.checkpoint import build_model_from_checkpoint, checkpoint_config
    from fpn.interop.torchvision import convert_state

    slots = tv.roi_heads.box_predictor.cls_score.out_features
    classes_file = tmp / "classes.txt"
    classes_file.write_text("".join(f"class{i}\n" for i in range(1, slots)))
    ckpt = convert_state(tv.state_dict(), "torchvision's model", classes_file,
                         [f"data.test_scale={scale}", f"data.max_size={max_size}", *overrides])  # fmt: skip
    cfg = checkpoint_config(ckpt, "converted")
    model = build_model_from_checkpoint(ckpt, "converted", cfg, "cpu")
    return model, cfg, Detector.from_model(model, cfg, ckpt["classes"], str(device), amp)


def _agreement(tv: torch.nn.Module, image: torch.Tensor, device, tmp: Path) -> dict:
    """Largest differences between torchvision's detections and ours with its weights on ``image`` (fp32, every
    score kept, so random weights give 100 detections to compare): {"detections", "max_box_px", "max_score",
    "labels_equal"}, detections in score order."""
    scale, max_size = tv.transform.min_size[0], tv.transform.max_size
    detector = _same_weights_detector(tv, scale, max_size, device, "none", tmp, ("model.score_thresh=0.0",))[2]
    threshold, tv.roi_heads.score_thresh = tv.roi_heads.score_thresh, 0.0
    try:
        with torch.inference_mode():
            ref = tv([image.to(device).float() / 255])[0]
        ours = detector.predict(image)
    finally:
        tv.roi_heads.score_thresh = threshold
    n = min(len(ours), len(ref["scores"]))
    boxes, scores = torch.from_numpy(ours.boxes[:n]), torch.from_numpy(ours.scores[:n])
    return {"detections": [len(ours), len(ref["scores"])],
            "max_box_px": float((boxes - ref["boxes"][:n].cpu()).abs().max()) if n else 0.0,
            "max_score": float((scores - ref["scores"][:n].cpu()).abs().max()) if n else 0.0,
            "labels_equal": bool(torch.equal(torch.from_numpy(ours.labels[:n]), ref["labels"][:n].cpu()))}


def bench_latency(cfg: Config, image_size: tuple[int, int], device: torch.device, amp: str, compare: str | None,
                  onnx: bool, warmup: int, iters: int) -> dict:
    """Batch-1 latency, one uint8 image -> detections: {impl: {"ms" (median), "ms_min", "precision", "iters",
    "vs_torchvision": torchvision's ms / this one's}}. Implementations: ours (``fpn.Detector`` of ``cfg``), ours in
    ONNX Runtime (``onnx``), torchvision (``compare``) and then also ours with torchvision's weights and
    conventions (``ours_tv_weights``, and in ONNX Runtime with ``onnx``), whose detections are compared with
    torchvision's (``"agreement"``); every round times each once, in turn."""
    from fpn.api import Detector
    from fpn.engine.export import export_onnx

    net, scale, max_size = cfg.model.backbone, cfg.data.test_scale, cfg.data.test_size_limit()
    num_classes = num_classes_of(cfg)
    inp = make_input(1, image_size, scale, max_size, torch.device("cpu"), num_classes=num_classes)
    image = (inp.originals[0] * 255).round().to(torch.uint8)  # (3, h, w)
    torch.manual_seed(0)
    ours = build_ours(cfg, num_classes)
    classes = [f"class{i}" for i in range(1, num_classes)]
    detector = Detector.from_model(ours, cfg, classes, str(device), amp)
    runners = {"ours": lambda: detector.predict(image)}
    precisions = {"ours": PRECISION_NAMES[amp]}
    agreement = None
    if onnx and device.type != "cpu":
        raise UserError("--onnx: the ONNX model runs in onnxruntime on the CPU; add --device cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def add_onnx(name: str, model, model_cfg, model_classes):
            exported = Detector.from_onnx(export_onnx(model, model_cfg, model_classes, tmp / f"{name}.onnx"),
                                          threads=torch.get_num_threads())  # fmt: skip
            runners[name], precisions[name] = (lambda: exported.predict(image)), "fp32"

        if onnx:
            add_onnx("ours_onnx", ours, cfg, classes)
        if compare == "torchvision":
            tv = build_torchvision(net, scale, max_size, num_classes).to(device).eval()
            tv_image = image.to(device).float() / 255

            def run_tv():
                with torch.inference_mode(), autocast(device, amp):
                    tv([tv_image])

            runners["torchvision"] = run_tv
            precisions["torchvision"] = PRECISION_NAMES[amp]
            same, same_cfg, same_detector = _same_weights_detector(tv, scale, max_size, device, amp, tmp)
            runners["ours_tv_weights"] = lambda: same_detector.predict(image)
            precisions["ours_tv_weights"] = PRECISION_NAMES[amp]
            if onnx:
                add_onnx("ours_tv_weights_onnx", same, same_cfg, same_detector.classes)
            agreement = _agreement(tv, image, device, tmp)
        times = {name: [] for name in runners}
        for i in range(warmup + iters):
            for name, fn in runners.items():
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
    results = {name: {"ms": statistics.median(t) * 1e3, "ms_min": min(t) * 1e3, "precision": precisions[name],
                       "iters": len(t)} for name, t in times.items()}  # fmt: skip
    if "torchvision" in results:
        for name, r in results.items():
            if name != "torchvision":
                r["vs_torchvision"] = results["torchvision"]["ms"] / r["ms"]  # > 1: faster than torchvision
    if agreement is not None:
        results["agreement"] = agreement
    return results


def run_benchmarks(cfg: Config, mode: str, device: torch.device, image_size: tuple[int, int] = (500, 375),
                   compare: str | None = None, warmup: int = 3, iters: int = 10, onnx: bool = False) -> dict:
    """Run the requested benchmarks of ``cfg`` (see ``bench_config``); returns {"config": ...,
    "<impl>/<what>": result dict, "ratio/...": x}."""
    net, batch = cfg.model.backbone, cfg.solver.batch_size
    if net not in NETS:
        raise UserError(f"--net {net}: unknown network; choose one of: {', '.join(NETS)}")
    precision = resolve_precision(cfg.solver.amp, device)
    amp = precision.amp
    scale, test_scale, max_size = cfg.data.train_scales[0], cfg.data.test_scale, cfg.data.max_size
    num_classes = num_classes_of(cfg)
    torch.manual_seed(0)
    impls = ["ours"] + (["torchvision"] if compare == "torchvision" else [])
    results: dict = {"config": {"preset": cfg.preset, "net": net, "backbone_width": cfg.model.backbone_width,
                                "fpn_channels": cfg.model.fpn_channels, "batch": batch, "mode": mode,
                                "device": str(device), "amp": amp, "precision": str(precision), "scale": scale,
                                "test_scale": test_scale, "max_size": max_size, "image_size": list(image_size),
                                "torch": torch.__version__, "channels_last": cfg.model.channels_last,
                                "optimizer": cfg.solver.optimizer}}  # fmt: skip
    if device.type == "cuda":
        results["config"]["gpu"] = torch.cuda.get_device_name(device)
    for impl in impls:
        if impl == "ours":
            model = build_ours(cfg, num_classes)
        else:
            model = build_torchvision(net, scale, max_size, num_classes)
        if mode in ("train", "all"):
            inp = make_input(batch, image_size, scale, max_size, device, num_classes=num_classes)
            results[f"{impl}/train_bs{batch}"] = bench_train(model, inp, impl, cfg, amp, device, warmup, iters)
        if mode in ("infer", "all"):
            test_max = cfg.data.test_size_limit()
            if impl == "torchvision":
                model.transform.min_size, model.transform.max_size = (test_scale,), test_max
            for bs in sorted({1, batch}):
                inp = make_input(bs, image_size, test_scale, test_max, device, num_classes=num_classes)
                results[f"{impl}/infer_bs{bs}"] = bench_infer(model, inp, impl, amp, device, warmup, iters)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if mode in ("infer", "all"):
        results["latency_bs1"] = bench_latency(cfg, image_size, device, amp, compare, onnx, warmup, iters)
    if compare == "torchvision":
        for key in [k for k in results if k.startswith("ours/")]:
            what = key.split("/", 1)[1]
            results[f"ratio/{what}"] = results[key]["images_per_s"] / results[f"torchvision/{what}"]["images_per_s"]
    return results


def format_results(results: dict) -> str:
    rows = [f"{'run':<26}{'img/s':>10}{'ms/iter':>10}{'GFLOP/img':>11}{'TFLOP/s':>9}{'peak GiB':>10}"]
    for key, r in results.items():
        if key == "config" or key.startswith("ratio/") or "images_per_s" not in r:
            continue
        mem = f"{r['peak_mem_gib']:.2f}" if "peak_mem_gib" in r else "-"
        rows.append(f"{key:<26}{r['images_per_s']:>10.2f}{r['ms_per_iter']:>10.1f}{r['gflop_per_image']:>11.1f}"
                    f"{r['tflops']:>9.2f}{mem:>10}")
    for key, ratio in results.items():
        if key.startswith("ratio/"):
            rows.append(f"ours / torchvision, {key[6:]}: {ratio:.2f}x")
    if "latency_bs1" in results:
        rows.append("batch-1 latency, one image to its detections (median of interleaved runs):")
        for name, r in results["latency_bs1"].items():
            if name == "agreement":
                rows.append(f"  ours with torchvision's weights vs torchvision ({r['detections'][1]} detections): "
                            f"boxes within {r['max_box_px']:.1e} px, scores within {r['max_score']:.1e}, "
                            f"labels {'equal' if r['labels_equal'] else 'DIFFER'}")
                continue
            speed = f"   {r['vs_torchvision']:.2f}x torchvision's speed" if "vs_torchvision" in r else ""
            rows.append(f"  {name:<14}{r['ms']:>9.1f} ms (min {r['ms_min']:.1f}), {r['precision']}{speed}")
    return "\n".join(rows)
