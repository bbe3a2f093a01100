"""torchvision Faster R-CNN models with random weights that still detect things, and the images they see (a module
of its own, imported by the interop and command tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import torch
from PIL import Image
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops.misc import FrozenBatchNorm2d

from fpn.interop.torchvision import NOT_A_CLASS, coco_slot_names

# proposals per image at test time (torchvision's default 1000): the box head on 1000 RoIs is most of the time
POST_NMS_TEST = 200


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    """PNG images (lossless: both models read the same pixels) of blotches and noise, one per (h, w)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        coarse = torch.rand(1, 3, max(1, h // 16), max(1, w // 16), generator=g) * 255
        img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0]
        img = (img + torch.rand(3, h, w, generator=g) * 40).clamp(0, 255).to(torch.uint8)
        paths.append(folder / f"img{i}.png")
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


def _calibrated_backbone(make, images: list[torch.Tensor]) -> nn.Module:
    """``make(norm_layer)`` built with BatchNorm, its statistics set from ``images`` (so activations of the random
    ResNet stay of order 1), then rebuilt with torchvision's FrozenBatchNorm2d holding them, as the published
    detection weights do."""
    calibrate = make(nn.BatchNorm2d)
    for m in calibrate.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0  # running statistics = this batch's
    batch = torch.stack([nn.functional.interpolate(im[None], size=(128, 128), mode="bilinear")[0] for im in images])
    with torch.no_grad():
        calibrate.train()(batch)
    frozen = make(FrozenBatchNorm2d)
    frozen.load_state_dict(calibrate.state_dict())
    return frozen


@torch.no_grad()
def _detect_something(model: FasterRCNN, images: list[torch.Tensor], seed: int, spread: float) -> FasterRCNN:
    """Random heads on a random ResNet give features of std ~100, one-hot class scores and near-zero deltas.
    Rescale, measured on ``images``: FPN outputs to std 1; objectness logits to std 3 and class logits to mean 0
    (plus a random bias) and std ``spread`` across RoIs (scores vary, several classes win); RPN deltas to std 0.3
    and box deltas to std 0.1 of the box size (proposals and detections move off the anchors)."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    image_list, _ = model.transform(images[:1])  # one image is enough to measure

    def features():
        return model.backbone(image_list.tensors)

    std = torch.cat([f.flatten() for f in features().values()]).std()
    for conv in model.backbone.fpn.layer_blocks.modules():  # P = output conv (linear): scale it
        if isinstance(conv, nn.Conv2d):
            conv.weight.div_(std)
            conv.bias.div_(std)
    feats = features()
    head = model.rpn.head
    logits, deltas = head(list(feats.values()))
    _scale(head.cls_logits, 3.0 / torch.cat([x.flatten() for x in logits]).std())
    _scale(head.bbox_pred, 0.3 / torch.cat([x.flatten() for x in deltas]).std())
    proposals, _ = model.rpn(image_list, feats)
    x = model.roi_heads.box_head(model.roi_heads.box_roi_pool(feats, proposals, image_list.image_sizes))
    predictor = model.roi_heads.box_predictor
    class_logits, box_deltas = predictor(x)
    predictor.cls_score.bias.sub_(class_logits.mean(dim=0))  # no class wins everywhere: only the RoI-dependent part
    _scale(predictor.cls_score, spread / (class_logits - class_logits.mean(dim=0)).std())
    predictor.cls_score.bias.add_(torch.randn(predictor.cls_score.bias.shape, generator=g))
    _scale(predictor.bbox_pred, 1.0 / box_deltas.std())  # box coder weights 10, 10, 5, 5: 0.1 .. 0.2 of the box
    return model


def _scale(layer: nn.Module, factor: torch.Tensor) -> None:
    layer.weight.mul_(factor)
    layer.bias.mul_(factor)


def coco_res50(images: list[torch.Tensor], min_size: int, max_size: int) -> FasterRCNN:
    """``fasterrcnn_resnet50_fpn``'s architecture (91 COCO slots) with calibrated random weights."""
    torch.manual_seed(50)

    def make(norm):
        return resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=norm, trainable_layers=3)

    model = FasterRCNN(_calibrated_backbone(make, images), num_classes=91, min_size=min_size, max_size=max_size,
                       rpn_post_nms_top_n_test=POST_NMS_TEST)
    return _unused_slots_never_win(_detect_something(model, images, seed=50, spread=3.0), coco_slot_names())


# a custom model's classes file: slot 2 unused
CUSTOM_SLOTS = ("cat", NOT_A_CLASS, "dog", "bird")


def custom_res18(images: list[torch.Tensor], min_size: int, max_size: int, channels: int = 64,
                 representation: int = 256) -> FasterRCNN:  # fmt: skip
    """A small ``FasterRCNN`` on a ResNet-18 FPN of ``channels`` channels, a ``representation``-wide box head and
    the :data:`CUSTOM_SLOTS` classes: the converter reads all of that from the tensors."""
    torch.manual_seed(18)

    def make(norm):
        from torchvision.models import resnet18

        body = resnet18(weights=None, norm_layer=norm)
        return BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)}, [64, 128, 256, 512], channels)

    backbone = _calibrated_backbone(make, images)
    box_head = TwoMLPHead(channels * 7 * 7, representation)
    predictor = FastRCNNPredictor(representation, len(CUSTOM_SLOTS) + 1)
    model = FasterRCNN(backbone, num_classes=None, min_size=min_size, max_size=max_size, box_head=box_head,
                       box_predictor=predictor, rpn_post_nms_top_n_test=POST_NMS_TEST)  # fmt: skip
    return _unused_slots_never_win(_detect_something(model, images, seed=18, spread=1.0), ("__background__", *CUSTOM_SLOTS))


@torch.no_grad()
def _unused_slots_never_win(model: FasterRCNN, slot_names) -> FasterRCNN:
    """Bias -1e4 for the N/A slots: trained weights leave them far below the others (never a target), so that
    dropping them (as the converter does) leaves the softmax unchanged."""
    unused = [i for i, name in enumerate(slot_names) if name == NOT_A_CLASS]
    model.roi_heads.box_predictor.cls_score.bias[unused] = -1e4
    return model


def as_torchvision_input(uint8_image: torch.Tensor) -> torch.Tensor:
    """What torchvision's detection models take: float in 0..1 (``to_tensor`` / ``convert_image_dtype``)."""
    return uint8_image.float() / 255


def records_of(paths: list[Path]) -> list[dict]:
    """Annotation-free records of the images, for the test loader."""
    records = []
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            width, height = im.size
        records.append({"id": str(i), "image": str(path), "width": width, "height": height,
                        "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
                        "difficult": np.zeros(0, bool)})  # fmt: skip
    return records
