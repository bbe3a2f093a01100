"""Images and config of the tiny trained detector of tests/conftest.py (a plain module: several test folders
have a conftest.py, so tests import these from here)."""

from __future__ import annotations

import torch

from fpn.config import synthetic

CLASSES = ("red", "green", "blue")
COLOURS = torch.tensor([[230, 30, 30], [30, 200, 40], [40, 50, 220]], dtype=torch.uint8)
TRAIN_SIZES = [(128, 160), (160, 128), (128, 128), (128, 192)]


def rectangles_image(seed: int, height: int, width: int, count: int = 3) -> tuple[torch.Tensor, dict]:
    """uint8 RGB (3, height, width): grey noise with ``count`` filled rectangles of the class colours;
    and its target {"boxes" continuous xyxy, "labels" 1..3}. A pure function of its arguments."""
    g = torch.Generator().manual_seed(seed)
    image = (torch.rand(3, height, width, generator=g) * 80 + 88).to(torch.uint8)
    boxes, labels = [], []
    for _ in range(count):
        w = int(width * (0.2 + 0.3 * torch.rand(1, generator=g)))
        h = int(height * (0.2 + 0.3 * torch.rand(1, generator=g)))
        x = int((width - w) * torch.rand(1, generator=g))
        y = int((height - h) * torch.rand(1, generator=g))
        label = int(torch.randint(1, 4, (1,), generator=g))
        image[:, y:y + h, x:x + w] = COLOURS[label - 1].view(3, 1, 1)
        boxes.append([x, y, x + w, y + h])
        labels.append(label)
    return image, {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


def small_config():
    """The synthetic preset shrunk for CPU tests: res18 from scratch, narrow FPN, few anchors sampled."""
    cfg = synthetic()
    m = cfg.model
    m.fpn_channels = m.rpn_channels = 64
    m.fc_dim = 128
    m.rpn_batch_per_image = m.roi_batch_per_image = 64
    m.rpn_pre_nms_top_n_train = m.rpn_pre_nms_top_n_test = 200
    m.rpn_post_nms_top_n_train = m.rpn_post_nms_top_n_test = 100
    m.roi_canonical_size = 64.0
    m.nms_thresh = 0.5  # the fixtures' numbers predate the preset's 0.4
    cfg.data.test_max_size = 0  # the test-time long side limit is max_size
    return cfg


def tiny_config():
    """``small_config`` narrower still, at test scale 128 / max 192: the trained detector of the fixtures."""
    cfg = small_config()
    cfg.data.train_scales, cfg.data.test_scale, cfg.data.max_size = (128,), 128, 192
    cfg.model.fpn_channels = cfg.model.rpn_channels = 32
    cfg.model.fc_dim = 64
    return cfg


def parity_images() -> list[torch.Tensor]:
    """Inputs of several sizes and aspect ratios (each resized differently by the test scale 128 / max 192:
    kept, shrunk, enlarged, capped by the long side), and a flat grey image with no objects."""
    sizes = [(128, 160), (96, 300), (300, 200), (50, 70), (413, 419), (360, 150)]
    images = [rectangles_image(7 + i, h, w)[0] for i, (h, w) in enumerate(sizes)]
    return images + [torch.full((3, 120, 150), 128, dtype=torch.uint8)]
