"""Export a trained detector as one self-contained graph: ONNX (for ONNX Runtime) or a ``torch.export``
program (``.pt2``).

The graph's input is one RGB image, uint8 (3, H, W), of any height and width. Inside: the checkpoint's
test-time input transform (:class:`fpn.data.transforms.GraphInputTransform`: resize to ``data.test_scale`` /
``data.test_size_limit()``, normalise, pad), then the detector's eval path (``FPNDetector.detect``: backbone, FPN, RPN
with its NMS per level, RoIAlign per level, box head, per-class NMS, boxes mapped back to the input's pixels).
Outputs: ``boxes`` float32 (D, 4) continuous xyxy in the input image's pixels, ``scores`` float32 (D,),
``labels`` int64 (D,) in 1..C (``classes[label - 1]``), best first, D <= ``model.detections_per_image``.

Batches: one image per run (a batch of same-size images would need the RPN's per-(image, level) NMS groups
built from a symbolic batch size; not done). Soft-NMS does not export (its loop runs until no box is left).

The same module traces into both formats; ONNX uses opset 18 (RoiAlign with ``coordinate_transformation_mode``
needs >= 16, i.e. ``aligned=True``). The metadata (ONNX ``metadata_props``; ``fpn.json`` inside the ``.pt2``)
holds the class names and the preprocessing and post-processing settings, as :func:`metadata` writes them.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

import fpn
from fpn.config import Config
from fpn.data.transforms import GraphInputTransform
from fpn.errors import UserError
from fpn.model import for_inference

OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "labels")
FORMATS = ("onnx", "torch-export")
BOX_FORMAT = "xyxy, continuous pixel coordinates of the input image"


class DeployedDetector(nn.Module):
    """uint8 RGB image (3, H, W) -> (boxes (D, 4) float32 in its pixels, scores (D,), labels (D,) int64)."""

    def __init__(self, model: nn.Module, transform: GraphInputTransform):
        super().__init__()
        self.transform = transform
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, sizes, original = self.transform(image)
        boxes, scores, labels, _ = self.model.detect(x, sizes, original)
        return boxes, scores, labels


def deployed_detector(model: nn.Module, cfg: Config) -> DeployedDetector:
    """The graph's module: ``for_inference(model)`` (an ``FPNDetector``; BatchNorms folded) behind the config's
    test-time input transform. UserError for settings that do not export."""
    if cfg.model.soft_nms:
        raise UserError("model.soft_nms=True does not export (its loop has no fixed length); export with "
                        "--set model.soft_nms=False")
    d = cfg.data
    transform = GraphInputTransform(d.test_scale, d.test_size_limit(), d.normalization, d.size_divisible, d.resize)
    return DeployedDetector(for_inference(model, purpose="export"), transform).eval()


def trace(module: DeployedDetector) -> torch.export.ExportedProgram:
    """``torch.export`` of the module with a dynamic height and width (any size from 2 pixels up)."""
    example = torch.zeros(3, 64, 96, dtype=torch.uint8, device=next(module.parameters()).device)
    height, width = torch.export.Dim("height", min=2), torch.export.Dim("width", min=2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torchvision's fake kernels use a renamed helper
        return torch.export.export(module, (example,), dynamic_shapes=({1: height, 2: width},))


def metadata(cfg: Config, classes: Sequence[str]) -> dict[str, str]:
    """What a runtime needs beside the graph, as strings (ONNX metadata_props are strings)."""
    d, m = cfg.data, cfg.model
    return {
        "fpn_version": fpn.__version__,
        "classes": json.dumps(list(classes)),
        "input": f"{INPUT_NAME}: uint8 (3, H, W) RGB, any H and W",
        "outputs": "boxes float32 (D, 4), scores float32 (D,), labels int64 (D,) in 1..C (classes[label - 1])",
        "box_format": BOX_FORMAT,
        "test_scale": str(d.test_scale),
        "max_size": str(d.test_size_limit()),
        "normalization": d.normalization,
        "resize": d.resize,
        "score_thresh": str(m.score_thresh),
        "nms_thresh": str(m.nms_thresh),
        "detections_per_image": str(m.detections_per_image),
        "net": m.backbone,
    }


class _DropExpectedNotes(logging.Filter):
    """Drops the one log line the exporter writes for this graph that a user cannot act on (an empty attribute list,
    which it types as INTS itself, as the graph needs); every other message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Attribute type is ambiguous because it is an empty sequence" not in record.getMessage()


def export_onnx(model: nn.Module, cfg: Config, classes: Sequence[str], path: str | Path, opset: int = OPSET) -> Path:
    """Write ``model`` as an ONNX file (see the module docstring); returns the path."""
    from fpn.io import atomic_write_bytes

    if opset < 16:
        raise UserError(f"--opset {opset}: RoIAlign with aligned=True needs opset 16 or newer")
    program = trace(deployed_detector(model, cfg))
    quiet = _DropExpectedNotes()
    ir_logger = logging.getLogger("onnx_ir._convenience")
    ir_logger.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            onnx_program = torch.onnx.export(
                program, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), opset_version=opset,
                dynamo=True, verbose=False,
            )
    finally:
        ir_logger.removeFilter(quiet)
    onnx_program.model.metadata_props.update(metadata(cfg, classes))
    path = Path(path)
    atomic_write_bytes(path, onnx_program.model_proto.SerializeToString())
    return path


def export_torch(model: nn.Module, cfg: Config, classes: Sequence[str], path: str | Path) -> Path:
    """Write ``model`` as a ``torch.export`` program (``torch.export.load(path).module()(image)``), with the
    metadata in its extra file ``fpn.json``; returns the path."""
    from fpn.io import atomic_open

    program = trace(deployed_detector(model, cfg))
    path = Path(path)
    with atomic_open(path, "wb") as f:
        torch.export.save(program, f, extra_files={"fpn.json": json.dumps(metadata(cfg, classes))})
    return path
