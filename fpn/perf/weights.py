"""The models ``fpn bench`` times, and their weights: the same trained weights for ours and torchvision's.

Random weights make a detector time a program nobody runs: with frozen BatchNorm and a random ResNet neither model
returns a detection and the RPN's proposals are degenerate, so NMS and RoI costs are arbitrary
(docs/PERFORMANCE.md, "Why random weights mislead"). So, by what ``--weights`` is:

* a torchvision Faster R-CNN state dict: torchvision's model loads it as it is; ours loads it converted
  (``fpn.interop.torchvision.convert_state``, torchvision's conventions), so both compute the same detections;
* an fpn checkpoint: ours loads it (no torchvision comparison: the converter goes one way);
* nothing, with ``--compare torchvision``: torchvision's model is first trained briefly on the bench images
  (:func:`pretrain_torchvision`: AdamW, a few dozen to a few hundred iterations), then both get those weights;
* nothing, ours alone: random weights, and results without detections say they are not representative.

Ours always runs with the bench config's sizes, solver and runtime section (precision, channels-last, fused frozen
BatchNorm, compile, pooling and NMS implementations: :func:`with_runtime`), whatever config came with
the weights, so that ``--set`` variants time the same weights.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fpn import config as C
from fpn.errors import UserError

PRETRAIN_LR = 1e-3
PRETRAIN_ROIS = 128  # RoIs sampled per image while pretraining (torchvision's default 512): 4x less head work


@dataclass
class BenchModels:
    """Ours (``cfg``, ``classes``), torchvision's (or None) and where their weights came from (``weights``)."""

    ours: torch.nn.Module
    cfg: C.Config
    classes: list[str]
    torchvision: torch.nn.Module | None = None
    weights: dict = field(default_factory=dict)


def build_torchvision(net: str, scale: int, max_size: int, num_classes: int = 21) -> torch.nn.Module:
    """torchvision's Faster R-CNN FPN on a ResNet of depth ``net`` (res18..res152), random weights."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name=f"resnet{net.removeprefix('res')}", weights=None, trainable_layers=3)
    return FasterRCNN(backbone, num_classes=num_classes, min_size=scale, max_size=max_size)


def read_weights(path: str | Path) -> tuple[str, dict]:
    """("fpn", checkpoint) for an fpn checkpoint, ("torchvision", state dict) for anything else that holds a state
    dict; a UserError naming ``--weights`` otherwise."""
    from fpn.checkpoint import load_checkpoint
    from fpn.model.backbone import read_state_dict

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--weights {path}: no such file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # torch's own message is many lines
        raise UserError(f"--weights {path}: not a readable PyTorch file ({type(e).__name__})") from None
    if isinstance(obj, dict) and {"config", "classes", "model"} <= obj.keys():
        return "fpn", load_checkpoint(p, "--weights")
    return "torchvision", read_state_dict(p, missing="weight file not found")


def with_runtime(cfg: C.Config, bench: C.Config) -> C.Config:
    """``cfg`` (the weights' architecture and conventions) with the bench config's sizes, solver and runtime
    section."""
    out = copy.deepcopy(cfg)
    out.solver = copy.deepcopy(bench.solver)
    out.data.train_scales, out.data.test_scale = bench.data.train_scales, bench.data.test_scale
    out.data.max_size, out.data.test_max_size = bench.data.max_size, bench.data.test_max_size
    out.runtime = copy.deepcopy(bench.runtime)
    return out


def torchvision_from_state(state: dict, source: str, scale: int, max_size: int) -> torch.nn.Module:
    """torchvision's model with ``state`` loaded as it is (architecture read from the tensors)."""
    from fpn.interop.torchvision import read_architecture, rename_state

    arch = read_architecture(rename_state(state, source), source)
    model = build_torchvision(arch.backbone, scale, max_size, arch.slots)
    missing, unexpected = model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise UserError(f"{source}: not a standard torchvision FasterRCNN(resnet_fpn_backbone) state dict "
                        f"(missing {missing[:2]}, unexpected {unexpected[:2]})")  # fmt: skip
    return model


def ours_from_checkpoint(ckpt: dict, source: str, bench: C.Config,
                         device="cpu") -> tuple[torch.nn.Module, C.Config, list[str]]:  # fmt: skip
    """Our model from an fpn checkpoint (its architecture and conventions; the bench's runtime settings)."""
    from fpn.checkpoint import build_model_from_checkpoint, checkpoint_config

    cfg = with_runtime(checkpoint_config(ckpt, source), bench)
    return build_model_from_checkpoint(ckpt, source, cfg, device), cfg, list(ckpt["classes"])


def ours_from_torchvision(state: dict, source: str, bench: C.Config,
                          device="cpu") -> tuple[torch.nn.Module, C.Config, list[str]]:  # fmt: skip
    """Our model with torchvision's weights, converted (its conventions; the bench's runtime settings)."""
    from fpn.interop.torchvision import convert_state, read_architecture, rename_state

    slots = read_architecture(rename_state(state, source), source).slots
    with tempfile.TemporaryDirectory() as tmp:
        classes_file = Path(tmp) / "classes.txt"
        classes_file.write_text("".join(f"class{i}\n" for i in range(1, slots)))
        ckpt = convert_state(state, source, classes_file)
    return ours_from_checkpoint(ckpt, source, bench, device)


def pretrain_torchvision(tv: torch.nn.Module, samples: list[dict], iters: int, batch: int, device: torch.device,
                         amp: str, scale: int, max_size: int, seed: int = 0) -> dict:  # fmt: skip
    """Train ``tv`` (in place) ``iters`` iterations on ``samples`` (boxes needed), ``batch`` images each, at
    ``scale`` / ``max_size``: AdamW at ``PRETRAIN_LR`` after a 10-iteration warm-up, gradients clipped at 10,
    ``PRETRAIN_ROIS`` RoIs per image. Labels beyond its classes wrap around. Returns {"iterations", "seconds",
    "first_loss", "last_loss", "scale"}; a non-finite loss is a RuntimeError (a bug, not a user mistake)."""
    from fpn.perf.images import wrap_labels
    from fpn.engine.device import autocast

    usable = [s for s in samples if s["boxes"] is not None and len(s["boxes"])]
    if not usable:
        raise UserError("--pretrain-iters: the bench images have no boxes to train on; give --weights or "
                        "--image-dir with a VOC/COCO dataset folder")  # fmt: skip
    slots = tv.roi_heads.box_predictor.cls_score.out_features
    tv.to(device).train()
    sizes = tv.transform.min_size, tv.transform.max_size, tv.roi_heads.fg_bg_sampler.batch_size_per_image
    tv.transform.min_size, tv.transform.max_size = (scale,), max_size
    tv.roi_heads.fg_bg_sampler.batch_size_per_image = PRETRAIN_ROIS
    params = [p for p in tv.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=PRETRAIN_LR, weight_decay=1e-4)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / 10))
    g = torch.Generator().manual_seed(seed)
    losses = []
    t0 = time.perf_counter()
    try:
        for _ in range(iters):
            picks = torch.randint(len(usable), (batch,), generator=g).tolist()
            images = [usable[i]["image"].to(device).float() / 255 for i in picks]
            targets = [{"boxes": usable[i]["boxes"].to(device),
                        "labels": wrap_labels(usable[i]["labels"], slots).to(device)} for i in picks]  # fmt: skip
            with autocast(device, amp):
                loss = sum(tv(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            warmup.step()
            losses.append(float(loss.detach()))  # one read per iteration: this is set-up, not the timed step
            if not math.isfinite(losses[-1]):
                raise RuntimeError(f"pretraining torchvision's model: non-finite loss at iteration {len(losses)}")
    finally:
        (tv.transform.min_size, tv.transform.max_size, tv.roi_heads.fg_bg_sampler.batch_size_per_image) = sizes
    tv.eval()
    return {"iterations": iters, "seconds": round(time.perf_counter() - t0, 1), "scale": scale, "batch": batch,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}  # fmt: skip


def default_pretrain(device: torch.device, scale: int, max_size: int) -> tuple[int, int, int]:
    """(iterations, scale, max_size) of the default pretraining: 150 at the bench's scale on a GPU (about a minute
    for R101 at batch 8); 60 at a scale of at most 320 on a CPU (a few minutes for R101; docs/PERFORMANCE.md)."""
    if device.type == "cuda":
        return 150, scale, max_size
    small = min(scale, 320)
    return 60, small, max(small, round(max_size * small / scale))


def build_models(bench: C.Config, num_classes: int, device: torch.device, amp: str, compare: str | None,
                 weights: str | None, samples: list[dict], pretrain_iters: int | None = None,
                 save_weights: str | None = None, log=print) -> BenchModels:  # fmt: skip
    """The models to time (see the module docstring). ``save_weights``: write the torchvision state dict that both
    ran (pretrained here or given) to this file, for the next run's ``--weights``."""
    from fpn.io import atomic_torch_save
    from fpn.model import build_detector

    scale, max_size = bench.data.train_scales[0], bench.data.max_size
    kind, state = read_weights(weights) if weights else (None, None)
    info: dict = {"source": str(weights) if weights else None}
    if kind == "fpn":
        if compare == "torchvision":
            raise UserError(
                f"--weights {weights}: an fpn checkpoint; --compare torchvision needs a torchvision Faster R-CNN "
                "state dict, which both models can load (the converter goes one way)"
            )
        ours, cfg, classes = ours_from_checkpoint(state, str(weights), bench, device)
        return BenchModels(ours, cfg, classes, None, {**info, "kind": "fpn checkpoint"})
    if kind is None and compare != "torchvision":
        torch.manual_seed(0)
        classes = [f"class{i}" for i in range(1, num_classes)]
        model = build_detector(bench, num_classes, load_pretrained=False, device=device)
        return BenchModels(model, bench, classes, None, {"source": None, "kind": "random"})
    if kind is None:
        iters, p_scale, p_max = default_pretrain(device, scale, max_size)
        iters = iters if pretrain_iters is None else pretrain_iters
        torch.manual_seed(0)
        tv = build_torchvision(bench.model.backbone, scale, max_size, num_classes)
        log(f"pretraining torchvision's model on the bench images: {iters} iterations at scale {p_scale}, "
            f"batch {bench.solver.batch_size} (--pretrain-iters; --save-weights keeps them for --weights)")
        info.update(kind="torchvision, pretrained here on the bench images",
                    pretrain=pretrain_torchvision(tv, samples, iters, bench.solver.batch_size, device, amp, p_scale,
                                                  p_max))  # fmt: skip
        state = {k: v.detach().cpu() for k, v in tv.state_dict().items()}
        source = "torchvision's model pretrained here"
    else:
        source = str(weights)
        info["kind"] = "torchvision state dict"
    if save_weights:
        atomic_torch_save(state, save_weights)
        info["saved_to"] = str(save_weights)
    tv = torchvision_from_state(state, source, scale, max_size) if compare == "torchvision" else None
    ours, cfg, classes = ours_from_torchvision(state, source, bench, device)
    return BenchModels(ours, cfg, classes, tv, info)
