"""fpn.Detector: inputs of every kind, batching, thresholds, outputs, errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_model import CLASSES, parity_images, rectangles_image
from fpn import Detector, Detections
from fpn.errors import UserError


@pytest.fixture(scope="module")
def detector(tiny_checkpoint):
    return Detector.from_checkpoint(tiny_checkpoint, device="cpu", amp="none")


def _same(a: Detections, b: Detections, atol=1e-4):
    assert a.labels.tolist() == b.labels.tolist() and a.names == b.names
    np.testing.assert_allclose(a.boxes, b.boxes, rtol=0, atol=atol)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=atol)


@pytest.mark.slow
def test_every_input_kind_gives_the_same_detections(detector, tmp_path):
    image = rectangles_image(3, 150, 210)[0]
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array).save(tmp_path / "a.png")
    by_tensor = detector.predict(image)
    assert isinstance(by_tensor, Detections) and len(by_tensor) > 0
    for other in (array, Image.fromarray(array), str(tmp_path / "a.png"), tmp_path / "a.png"):
        _same(detector.predict(other), by_tensor, atol=0)
    # boxes are in the input image's pixels (150 x 210), dtypes as documented, names follow labels
    d = by_tensor
    assert d.boxes.dtype == np.float32 and d.scores.dtype == np.float32 and d.labels.dtype == np.int64
    assert d.boxes.shape == (len(d), 4) and (d.boxes[:, [0, 2]] <= 210).all() and (d.boxes[:, [1, 3]] <= 150).all()
    assert d.names == [CLASSES[i - 1] for i in d.labels] and (np.diff(d.scores) <= 0).all()

def test_finds_the_objects_of_a_training_image(detector):
    image, target = rectangles_image(100, 128, 160)  # TRAIN_SIZES[0]: a briefly trained model knows it
    d = detector.predict(image)
    for box, label in zip(target["boxes"], target["labels"]):  # the best match of each object has its class
        iou = _iou(box.numpy(), d.boxes)
        assert iou.max() > 0.5 and d.labels[iou.argmax()] == label, (iou.max(), d.labels[iou.argmax()], label)


def _iou(box, boxes):
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


@pytest.mark.slow
def test_batch_size_changes_speed_not_detections(detector):
    images = parity_images() + [rectangles_image(50, 128, 160)[0]]  # two images of one padded size
    one = detector.predict(images, batch_size=1)
    many = detector.predict(images, batch_size=4)
    assert isinstance(one, list) and len(one) == len(images)
    for a, b in zip(one, many):
        _same(a, b)


def test_score_thresh_and_serialisation(detector):
    image = rectangles_image(3, 150, 210)[0]
    every = detector.predict(image)
    assert every.scores.min() > detector.score_thresh == 0.05
    high = detector.predict([image], score_thresh=0.5)[0]
    assert len(high) == (every.scores >= 0.5).sum() > 0
    _same(high, Detections(every.boxes[: len(high)], every.scores[: len(high)], every.labels[: len(high)],
                           every.names[: len(high)]))
    d = json.loads(high.to_json())
    assert d == high.to_dict() and set(d) == {"boxes", "scores", "labels", "names"}
    assert d["boxes"][0] == pytest.approx(high.boxes[0].tolist()) and d["names"] == high.names


def test_overrides_reach_the_model(tiny_checkpoint):
    capped = Detector.from_checkpoint(tiny_checkpoint, device="cpu", amp="none",
                                      overrides=["model.detections_per_image=2"])  # fmt: skip
    assert len(capped.predict(rectangles_image(3, 150, 210)[0])) == 2


@pytest.mark.parametrize("item, message", [
    (np.zeros((20, 30), np.uint8), "input 0: expected an RGB uint8 HxWx3 numpy array, got uint8 (20, 30)"),
    (np.zeros((20, 30, 3), np.float32), "input 0: expected an RGB uint8 HxWx3 numpy array, got float32"),
    (torch.rand(3, 20, 30), "input 0: expected a uint8 3xHxW tensor, got torch.float32 (3, 20, 30)"),
    (torch.zeros(20, 30, 3, dtype=torch.uint8), "expected a uint8 3xHxW tensor"),
    (torch.zeros(3, 0, 30, dtype=torch.uint8), "input 0: the image is empty"),
    ([[1, 2]], "input 0: expected a path, a PIL image"),
    ("missing.jpg", "missing.jpg: image not found"),
])
def test_bad_inputs_are_user_errors(detector, item, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        detector.predict([item])


def test_bad_files_are_user_errors(tmp_path, tiny_checkpoint):
    pytest.importorskip("onnxruntime")
    (tmp_path / "x.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="x.onnx: not a readable ONNX model"):
        Detector.from_onnx(tmp_path / "x.onnx")
    with pytest.raises(UserError, match="ONNX model not found"):
        Detector.from_onnx(tmp_path / "y.onnx")
    with pytest.raises(UserError, match="checkpoint file not found"):
        Detector.from_checkpoint(tmp_path / "y.pth")
    with pytest.raises(UserError, match="amp fp8: expected one of"):
        Detector.from_checkpoint(tiny_checkpoint, amp="fp8")


@pytest.mark.slow
def test_from_onnx_reads_the_classes(tiny_onnx):
    exported = Detector.from_onnx(tiny_onnx)
    assert exported.classes == CLASSES and exported.score_thresh == 0.05
    assert "onnxruntime" in repr(exported)


@pytest.mark.slow
def test_import_fpn_stays_light():
    import subprocess
    import sys

    code = "import sys, fpn; assert 'torch' not in sys.modules; from fpn import Detector; print(Detector.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Detector"
