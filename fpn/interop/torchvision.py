"""torchvision's Faster R-CNN weights as an fpn checkpoint (``fpn convert torchvision``).

Reads the state dict of a torchvision ``FasterRCNN`` on a ``resnet_fpn_backbone`` (``fasterrcnn_resnet50_fpn``, or
any ResNet depth 18..152) with the standard heads (``RPNHead``, ``TwoMLPHead``, ``FastRCNNPredictor``) and builds a
weights-only checkpoint whose model computes torchvision's detections. Its config is the ``torchvision`` preset
(torchvision's conventions; docs/TORCHVISION.md) with the architecture read from the tensors:

* depth: blocks per stage and block type (bottleneck or basic); FPN width, RPN width and anchors per cell, box-head
  width and RoI pool size: weight shapes;
* classes: COCO's 91-slot predictor (background, 80 classes, 10 "N/A" slots) becomes the 80 named classes (their
  rows only); another class count needs a classes file naming slots 1..K-1 ("N/A" for an unused slot).

What the weights cannot tell (the input size, thresholds, anchor sizes of a customised ``FasterRCNN``) is the
preset's (torchvision's defaults) unless overridden (``fpn convert --set``).

Parameter names map one to one: ``backbone.body.*`` -> ``backbone.*``, ``backbone.fpn.inner_blocks.i`` /
``layer_blocks.i`` -> ``neck.lateral.i`` / ``neck.output.i``, the RPN's ``cls_logits`` / ``bbox_pred`` ->
``objectness`` / ``deltas``, ``fc6`` / ``fc7`` -> ``fc1`` / ``fc2``, the predictor -> ``box_head.cls_score`` /
``bbox_pred``. The one reorder is fc1's input: torchvision's ``TwoMLPHead`` flattens each pooled RoI in (channel,
y, x) order, fpn's box head reads (y, x, channel). Older torchvision key names (``rpn.head.conv.weight``,
``inner_blocks.i.weight``) are accepted.

Nothing is downloaded, ever: :func:`resolve_source` finds torchvision's file in the torch hub cache by model name.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from fpn import config as C
from fpn.checkpoint import FC1_WEIGHT, cyx_to_yxc, load_model_state, weights_checkpoint
from fpn.errors import UserError
from fpn.model.backbone import read_state_dict

# model names ``fpn convert torchvision NAME`` finds in the torch hub cache -> their torchvision weights entry
HUB_MODELS = {"fasterrcnn_resnet50_fpn": "COCO_V1"}
NOT_A_CLASS = "N/A"  # torchvision's name of COCO's unused category slots
COCO_SLOTS = 91

# (blocks per stage, bottleneck blocks) -> backbone
_BACKBONES = {
    ((2, 2, 2, 2), False): "res18",
    ((3, 4, 6, 3), False): "res34",
    ((3, 4, 6, 3), True): "res50",
    ((3, 4, 23, 3), True): "res101",
    ((3, 8, 36, 3), True): "res152",
}
# torchvision name pattern -> fpn name
_RENAMES = [
    (re.compile(r"backbone\.body\.(.+)"), r"backbone.\1"),
    (re.compile(r"backbone\.fpn\.inner_blocks\.(\d+)\.(?:0\.)?(weight|bias)"), r"neck.lateral.\1.\2"),
    (re.compile(r"backbone\.fpn\.layer_blocks\.(\d+)\.(?:0\.)?(weight|bias)"), r"neck.output.\1.\2"),
    (re.compile(r"rpn\.head\.conv\.(?:0\.0\.)?(weight|bias)"), r"rpn.head.conv.\1"),
    (re.compile(r"rpn\.head\.cls_logits\.(weight|bias)"), r"rpn.head.objectness.\1"),
    (re.compile(r"rpn\.head\.bbox_pred\.(weight|bias)"), r"rpn.head.deltas.\1"),
    (re.compile(r"roi_heads\.box_head\.fc6\.(weight|bias)"), r"roi_heads.box_head.fc1.\1"),
    (re.compile(r"roi_heads\.box_head\.fc7\.(weight|bias)"), r"roi_heads.box_head.fc2.\1"),
    (re.compile(r"roi_heads\.box_predictor\.cls_score\.(weight|bias)"), r"roi_heads.box_head.cls_score.\1"),
    (re.compile(r"roi_heads\.box_predictor\.bbox_pred\.(weight|bias)"), r"roi_heads.box_head.bbox_pred.\1"),
]
CLS_SCORE = "roi_heads.box_head.cls_score"
BBOX_PRED = "roi_heads.box_head.bbox_pred"


@dataclass
class Architecture:
    """What the tensors of a torchvision FasterRCNN say about its architecture."""

    backbone: str  # res18 .. res152
    fpn_channels: int
    rpn_channels: int
    anchors_per_cell: int
    fc_dim: int
    pool_size: int
    slots: int  # class slots of the predictor, background included


def resolve_source(src: str) -> Path:
    """A .pth path, or a model name of :data:`HUB_MODELS` found in the torch hub cache (never downloaded)."""
    path = Path(src)
    if path.is_file():
        return path
    if src in HUB_MODELS:
        import torchvision

        weights = torchvision.models.get_model_weights(src)[HUB_MODELS[src]]
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(weights.url).path).name
        if cached.is_file():
            return cached
        raise UserError(
            f"{src}: torchvision's weights are not in the torch hub cache; download {weights.url} and put it at "
            f"{cached} (fpn never downloads), or pass the file's path"
        )
    if path.exists():
        raise UserError(f"{src}: is a folder, not a weight file")
    raise UserError(f"{src}: no such file, and not a model name fpn can find in the torch hub cache "
                    f"({', '.join(HUB_MODELS)})")  # fmt: skip


def rename_state(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """torchvision parameter names -> fpn's (BatchNorm's ``num_batches_tracked`` dropped: FrozenBatchNorm has none).
    A key of anything but the standard Faster R-CNN heads is a UserError."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.endswith("num_batches_tracked"):
            continue
        for pattern, target in _RENAMES:
            if pattern.fullmatch(key):
                out[pattern.sub(target, key)] = value
                break
        else:
            raise UserError(
                f"{source}: not a torchvision FasterRCNN(resnet_fpn_backbone) state dict with the standard heads "
                f"(unexpected key '{key}'; fasterrcnn_resnet50_fpn_v2's conv heads, normalised FPN layers and "
                "Mask/Keypoint R-CNN heads are not supported)"
            )
    return out


def read_architecture(state: dict[str, Tensor], source: str) -> Architecture:
    """The :class:`Architecture` of a state dict in fpn names (:func:`rename_state`)."""

    def shape(key: str) -> torch.Size:
        if key not in state:
            raise UserError(f"{source}: not a torchvision Faster R-CNN state dict (no {key})")
        return state[key].shape

    blocks = tuple(
        len({k.split(".")[2] for k in state if re.fullmatch(rf"backbone\.layer{i}\.\d+\.conv1\.weight", k)})
        for i in range(1, 5)
    )
    backbone = _BACKBONES.get((blocks, "backbone.layer1.0.conv3.weight" in state))
    if backbone is None:
        raise UserError(
            f"{source}: the backbone is not a torchvision ResNet 18..152 (blocks per stage {blocks})"
        )
    fpn_channels = shape("neck.lateral.0.weight")[0]
    fc_dim, fc_in = shape(FC1_WEIGHT)
    pool_size = math.isqrt(fc_in // fpn_channels)
    if pool_size * pool_size * fpn_channels != fc_in:
        raise UserError(f"{source}: box head input {fc_in} is not {fpn_channels} channels x s x s")
    slots = shape(f"{CLS_SCORE}.weight")[0]
    if shape(f"{BBOX_PRED}.weight")[0] != 4 * slots:
        raise UserError(f"{source}: the box predictor has {shape(f'{BBOX_PRED}.weight')[0]} outputs, "
                        f"not 4 per class slot ({slots})")  # fmt: skip
    return Architecture(
        backbone=backbone, fpn_channels=fpn_channels, rpn_channels=shape("rpn.head.conv.weight")[0],
        anchors_per_cell=shape("rpn.head.objectness.weight")[0], fc_dim=fc_dim, pool_size=pool_size, slots=slots,
    )  # fmt: skip


def coco_slot_names() -> list[str]:
    """The 91 slot names of torchvision's COCO detectors: "__background__", 80 classes and 10 "N/A"."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


def read_slot_names(path: str | Path) -> list[str]:
    """Class names of slots 1..K-1 from a file, one per line (blank lines skipped, a first "__background__"
    line allowed, "N/A" for an unused slot; names may contain spaces, as COCO's do)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"--classes {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--classes {path}: cannot read class names ({e})") from None
    names, seen = [], {}
    for n, line in enumerate(lines, 1):
        name = line.strip()
        if not name or (not names and name == "__background__"):
            continue
        if name != NOT_A_CLASS and name.lower() in seen:
            raise UserError(f"--classes {path}:{n}: class '{name}' is already listed on line {seen[name.lower()]}")
        seen[name.lower()] = n
        names.append(name)
    if all(name == NOT_A_CLASS for name in names):
        raise UserError(f"--classes {path}: names no classes")
    return names


def slot_names(slots: int, classes_file: str | Path | None, source: str) -> list[str]:
    """Name of every class slot, background (slot 0) included."""
    if classes_file is None:
        if slots == COCO_SLOTS:
            return coco_slot_names()
        raise UserError(
            f"{source}: the predictor has {slots} class slots (background + {slots - 1}); name them with "
            f"--classes FILE (one name per line for slots 1..{slots - 1}, {NOT_A_CLASS} for an unused one)"
        )
    names = read_slot_names(classes_file)
    if len(names) != slots - 1:
        raise UserError(f"--classes {classes_file}: names {len(names)} slots, but {source} has {slots - 1} "
                        f"(background aside)")  # fmt: skip
    return ["__background__", *names]


def converted_config(arch: Architecture, dataset: str) -> C.Config:
    """The ``torchvision`` preset with the architecture of the weights."""
    cfg = C.torchvision()
    cfg.data.dataset = dataset
    m = cfg.model
    m.backbone, m.pretrained = arch.backbone, "none"
    m.fpn_channels, m.rpn_channels = arch.fpn_channels, arch.rpn_channels
    m.fc_dim, m.pool_size = arch.fc_dim, arch.pool_size
    return cfg


def convert_state(
    state: dict[str, Tensor], source: str, classes_file: str | Path | None = None, overrides: Sequence[str] = ()
) -> dict:
    """A torchvision FasterRCNN state dict -> an fpn weights-only checkpoint (see the module docstring).
    ``overrides``: ``section.field=value`` config settings the weights cannot tell (``fpn convert --set``)."""
    import fpn.model

    renamed = rename_state(state, source)
    arch = read_architecture(renamed, source)
    names = slot_names(arch.slots, classes_file, source)
    keep = [0] + [i for i in range(1, arch.slots) if names[i] != NOT_A_CLASS]  # background + named slots
    classes = tuple(names[i] for i in keep[1:])
    rows = torch.tensor([4 * i + j for i in keep for j in range(4)])  # each kept slot's 4 delta rows
    for suffix in ("weight", "bias"):
        renamed[f"{CLS_SCORE}.{suffix}"] = renamed[f"{CLS_SCORE}.{suffix}"][keep]
        renamed[f"{BBOX_PRED}.{suffix}"] = renamed[f"{BBOX_PRED}.{suffix}"][rows]
    renamed[FC1_WEIGHT] = cyx_to_yxc(renamed[FC1_WEIGHT], arch.pool_size)

    cfg = converted_config(arch, "coco" if classes_file is None else "custom")
    C.apply_overrides(cfg, list(overrides))
    if arch.anchors_per_cell != len(cfg.model.anchor_ratios):
        raise UserError(
            f"{source}: the RPN has {arch.anchors_per_cell} anchors per cell, the config "
            f"{len(cfg.model.anchor_ratios)} ratios {cfg.model.anchor_ratios}; give the model's with "
            "--set model.anchor_ratios=[...] (one anchor size per level)"
        )
    model = fpn.model.build_detector(cfg, len(classes) + 1, load_pretrained=False)
    load_model_state(model, {"model": renamed}, source)
    dropped = arch.slots - len(keep)
    return weights_checkpoint(
        model.state_dict(), config=C.to_dict(cfg), classes=classes, net=cfg.model.backbone, dataset=cfg.data.dataset,
        converted_from={"format": "torchvision", "source": str(source), "slots": keep, "dropped_slots": dropped},
    )  # fmt: skip


def convert_file(src: str, classes_file: str | Path | None = None, overrides: Sequence[str] = ()) -> dict:
    """:func:`convert_state` of a .pth file or hub-cache model name (:func:`resolve_source`)."""
    path = resolve_source(src)
    state = read_state_dict(path, missing="weight file not found")
    return convert_state(state, str(path), classes_file, overrides)
