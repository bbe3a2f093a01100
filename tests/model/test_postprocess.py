import math

import torch

from fpn.model.box_coder import BoxCoder
from fpn.model.postprocess import PostProcessor, SoftNMSPostProcessor, soft_nms, split_by_image


def _per_image(post, *args, **kwargs):
    """The post-processor's flat output as one dict per image."""
    return split_by_image(*post(*args, **kwargs), args[0].shape[0])


def _logits_for(probs):
    return torch.log(torch.tensor(probs))  # softmax(log p) = p when p sums to 1


def test_nms_threshold_and_rescaling():
    # one image, 3 proposals, classes: background + 2
    proposals = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 8.0], [50.0, 50.0, 70.0, 90.0]]])
    logits = _logits_for([[0.1, 0.9, 0.0 + 1e-9], [0.2, 0.8, 1e-9], [0.6, 0.03, 0.37]]).unsqueeze(0)
    deltas = torch.zeros(1, 3, 3, 4)  # class-specific, zero: boxes = proposals
    post = PostProcessor(BoxCoder((10.0, 10.0, 5.0, 5.0)), score_thresh=0.05, nms_thresh=0.5, detections_per_image=10)
    sizes = torch.tensor([[80.0, 100.0]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    (out,) = _per_image(post, logits, deltas, proposals, valid, sizes)
    # proposal 1 overlaps proposal 0 with IoU 0.8 in class 1 -> suppressed; proposal 2 class 1 score 0.03 < 0.05;
    # proposal 2 is clipped to the 80-pixel-high image
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.37]))
    assert out["labels"].tolist() == [1, 2]
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 70.0, 80.0]]))
    # original image twice as wide, 1.5 times as high as the network input
    original = torch.tensor([[120.0, 200.0]])
    (scaled,) = _per_image(post, logits, deltas, proposals, valid, sizes, original_sizes=original)
    torch.testing.assert_close(scaled["boxes"], torch.tensor([[0.0, 0.0, 20.0, 15.0], [100.0, 75.0, 140.0, 120.0]]))
    # invalid (padding) proposals never produce detections; detections_per_image caps the output
    (none,) = _per_image(post, logits, deltas, proposals, torch.zeros(1, 3, dtype=torch.bool), sizes)
    assert none["boxes"].shape == (0, 4) and none["labels"].dtype == torch.int64
    post.detections_per_image = 1
    (one,) = _per_image(post, logits, deltas, proposals, valid, sizes)
    assert one["labels"].tolist() == [1]


def test_soft_nms_linear_and_gaussian():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0],
                          [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.0015])
    groups = torch.tensor([0, 0, 0, 1, 0])
    keep, new = soft_nms(boxes, scores, groups, "linear", iou_thresh=0.3, min_score=0.001)
    # box 1: IoU 0.5 with box 0 -> 0.8 * 0.5; box 2 disjoint; box 3 in another group; box 4: IoU 0.9 -> dropped
    assert keep.tolist() == [0, 2, 3, 1]
    torch.testing.assert_close(new, torch.tensor([0.9, 0.7, 0.6, 0.4]))
    keep, new = soft_nms(boxes[:4], scores[:4], groups[:4], "gaussian", sigma=0.5)
    assert keep.tolist() == [0, 2, 3, 1]
    torch.testing.assert_close(new, torch.tensor([0.9, 0.7, 0.6, 0.8 * math.exp(-0.25 / 0.5)]))


def test_soft_nms_in_postprocessor():
    proposals = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]]])
    logits = _logits_for([[0.1, 0.9], [0.2, 0.8]]).unsqueeze(0)
    post = SoftNMSPostProcessor(BoxCoder(), score_thresh=0.05, nms_thresh=0.3)
    (out,) = _per_image(post, logits, torch.zeros(1, 2, 1, 4), proposals, torch.ones(1, 2, dtype=torch.bool),
                        torch.tensor([[50.0, 50.0]]))
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.4]))  # class-agnostic deltas (K = 1)
    assert out["labels"].tolist() == [1, 1]
