"""The Python API: :class:`Detector` and its :class:`Detections`.

    from fpn import Detector

    detector = Detector.from_checkpoint("runs/res101/pascal_voc/default/fpn_1_12_5010.pth")
    for det in detector.predict(["street.jpg", "park.jpg"]):
        print(det.names, det.scores, det.boxes)

A detector runs a checkpoint in PyTorch (``from_checkpoint``) or an exported ONNX file in ONNX Runtime
(``from_onnx``; ``fpn export``), with the same preprocessing as training and ``fpn test``
(:mod:`fpn.data.transforms`; inside the graph for ONNX). Inputs: a path, a PIL image, an RGB uint8 H x W x 3
numpy array or a uint8 3 x H x W tensor, or a list of them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fpn.errors import UserError

INPUT_KINDS = "a path, a PIL image, an RGB uint8 HxWx3 numpy array or a uint8 3xHxW tensor"


@dataclass
class Detections:
    """The detections of one image, best first: ``boxes`` float32 (D, 4) continuous xyxy in that image's
    pixels, ``scores`` float32 (D,), ``labels`` int64 (D,) in 1..C, ``names`` the class name of each."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.scores)

    def to_dict(self) -> dict[str, list]:
        return {
            "boxes": self.boxes.tolist(), "scores": self.scores.tolist(), "labels": self.labels.tolist(),
            "names": list(self.names),
        }  # fmt: skip

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def load_input(item: Any, where: str) -> torch.Tensor:
    """One input as a uint8 RGB (3, H, W) tensor; UserError naming ``where`` for anything else."""
    if isinstance(item, (str, Path)):
        from fpn.data.transforms import read_image

        return read_image(item)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise UserError(f"{where}: expected an RGB uint8 HxWx3 numpy array, got {item.dtype} {item.shape}")
        image = torch.from_numpy(np.ascontiguousarray(item)).permute(2, 0, 1).contiguous()
    elif isinstance(item, torch.Tensor):
        if item.dtype != torch.uint8 or item.dim() != 3 or item.shape[0] != 3:
            raise UserError(f"{where}: expected a uint8 3xHxW tensor, got {item.dtype} {tuple(item.shape)} "
                            "(a float image in 0..1: (x * 255).round().to(torch.uint8))")  # fmt: skip
        image = item.detach().cpu().contiguous()
    elif hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image, without importing PIL
        image = torch.from_numpy(np.asarray(item.convert("RGB")).copy()).permute(2, 0, 1).contiguous()
    else:
        raise UserError(f"{where}: expected {INPUT_KINDS}, got {type(item).__name__}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise UserError(f"{where}: the image is empty ({image.shape[2]}x{image.shape[1]})")
    return image


class Detector:
    """An object detector: build one with :meth:`from_checkpoint` or :meth:`from_onnx`, call :meth:`predict`.

    ``classes``: the class names (label ``i`` is ``classes[i - 1]``); ``score_thresh``: the model's own score
    threshold (its detections are all above it; ``predict(score_thresh=...)`` can only raise it).
    """

    def __init__(self, runner, classes: Sequence[str], score_thresh: float, description: str):
        self._runner = runner
        self.classes = tuple(classes)
        self.score_thresh = float(score_thresh)
        self.description = description

    def __repr__(self) -> str:
        return f"Detector({self.description}, {len(self.classes)} classes)"

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", amp: str = "auto", overrides: Sequence[str] = ()
    ) -> "Detector":
        """A checkpoint written by ``fpn train``, in PyTorch on ``device`` (auto | cpu | cuda | cuda:N) with
        precision ``amp`` (auto: bf16 where the device has it natively, else fp32 on a CPU and fp16 on an older
        GPU; none | bf16 | fp16). ``overrides``: test-time config fields as for ``--set``, e.g.
        ``["model.score_thresh=0.01"]``."""
        from fpn import config as C
        from fpn.checkpoint import build_model_from_checkpoint, checkpoint_config, load_checkpoint

        ckpt = load_checkpoint(path)
        cfg = C.apply_overrides(checkpoint_config(ckpt, path), list(overrides))
        model = build_model_from_checkpoint(ckpt, path, cfg, "cpu")
        return cls.from_model(model, cfg, ckpt["classes"], device, amp, name=str(path))

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, cfg, classes: Sequence[str], device: str = "auto", amp: str = "auto",
        name: str = "model",
    ) -> "Detector":
        """An ``FPNDetector`` built in this process (``fpn.model.build_detector``) with its ``fpn.config.Config``
        (preprocessing and post-processing settings) and class names. It runs a copy prepared for inference
        (``fpn.model.for_inference``); the model itself is left as it is."""
        from fpn.engine.device import resolve_device, resolve_precision
        from fpn.model import for_inference

        torch_device = resolve_device(device, flag="device")
        precision = resolve_precision(amp, torch_device, flag="amp")
        runner = _TorchRunner(for_inference(model, torch_device).to(torch_device), cfg, torch_device, precision.amp)
        return cls(runner, classes, cfg.model.score_thresh, f"{name} on {torch_device}, {precision}")

    @classmethod
    def from_onnx(cls, path: str | Path, threads: int | None = None) -> "Detector":
        """A model written by ``fpn export --format onnx``, in ONNX Runtime on the CPU (``threads``: intra-op
        threads, default ONNX Runtime's: one per physical core)."""
        runner = _OnnxRunner(path, threads)
        meta = runner.metadata
        return cls(runner, json.loads(meta["classes"]), float(meta.get("score_thresh", 0.0)), f"{path} (onnxruntime)")

    def predict(self, inputs, score_thresh: float | None = None, batch_size: int = 8):
        """Detections of one input (a :class:`Detections`) or of a list of inputs (a list, in input order).

        ``score_thresh``: keep detections scoring at least this (default: all the model gives, i.e. above
        ``self.score_thresh``). ``batch_size``: images run together (PyTorch; ONNX runs one at a time); only
        images of the same padded network-input size share a batch, so it changes speed, not the detections.
        """
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        if batch_size < 1:
            raise UserError(f"batch_size {batch_size}: must be at least 1")
        images = [load_input(item, _where(item, i)) for i, item in enumerate(items)]
        outputs = self._runner(images, batch_size)
        floor = -math.inf if score_thresh is None else float(score_thresh)
        results = [self._detections(out, floor) for out in outputs]
        return results[0] if single else results

    def _detections(self, output: dict[str, np.ndarray], floor: float) -> Detections:
        keep = output["scores"] >= floor
        labels = output["labels"][keep].astype(np.int64)
        return Detections(
            boxes=output["boxes"][keep].astype(np.float32).reshape(-1, 4),
            scores=output["scores"][keep].astype(np.float32),
            labels=labels,
            names=[self.classes[i - 1] for i in labels.tolist()],
        )


def _where(item: Any, index: int) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"input {index}"


class _TorchRunner:
    """uint8 images -> outputs of the PyTorch model, batched by padded network-input size."""

    def __init__(self, model: torch.nn.Module, cfg, device: torch.device, amp: str):
        from fpn.structures import Staging

        self.model, self.cfg, self.device, self.amp = model, cfg, device, amp
        self.staging = Staging()  # page-locked buffers reused across calls (a GPU only)

    @torch.inference_mode()
    def __call__(self, images: list[torch.Tensor], batch_size: int) -> list[dict[str, np.ndarray]]:
        from fpn.data.transforms import PadRule, batch_images, is_normalized, normalize_batch, transform_image
        from fpn.engine.device import autocast

        d = self.cfg.data
        resized = [
            transform_image(im, None, d.test_scale, d.test_size_limit(), d.normalization, resize=d.resize, float_resize=True)[0]
            for im in images
        ]
        normalization = None if is_normalized(d.resize) else d.normalization
        pad = PadRule(d.size_divisible, d.test_pad_bucket, d.test_scale, d.test_size_limit())
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(resized):  # images padded to the same network-input size run together
            groups.setdefault(pad([tuple(im.shape[-2:])]), []).append(i)
        outputs: list[dict | None] = [None] * len(images)
        for members in groups.values():
            for start in range(0, len(members), batch_size):
                chunk = members[start:start + batch_size]
                # the 0..255 pixels go to the device and are normalised there (the loader's Batch.inputs)
                pixels, sizes = batch_images([resized[i] for i in chunk], None, pad=pad)
                batch = self.staging.to_device(pixels, self.device)
                if normalization is not None:
                    batch = normalize_batch(batch, sizes, normalization, to_device=self.staging.to_device)
                with autocast(self.device, self.amp):
                    outs = self.model.detect_to_host(batch, sizes,
                                                     original_sizes=[tuple(images[i].shape[-2:]) for i in chunk])
                for i, out in zip(chunk, outs):
                    outputs[i] = {k: v.numpy() for k, v in out.items()}
        return outputs


class _OnnxRunner:
    """uint8 images -> outputs of an exported ONNX graph in ONNX Runtime, one image per run."""

    def __init__(self, path: str | Path, threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError('ONNX models need onnxruntime: pip install "fpn[onnx]"') from None
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: ONNX model not found")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for files it cannot read
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise UserError(f"{path}: not a readable ONNX model ({reason})") from None
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        if "classes" not in self.metadata:
            raise UserError(f"{path}: not an fpn export (no class names in its metadata)")
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: list[torch.Tensor], batch_size: int) -> list[dict[str, np.ndarray]]:
        outputs = []
        for image in images:
            values = self.session.run(self.output_names, {self.input_name: image.numpy()})
            outputs.append(dict(zip(self.output_names, values)))
        return outputs
