"""Padded ground truth with crowd regions, and what the RPN and the RoI heads do with a crowd box."""

import torch

from fpn.config import synthetic
from fpn.structures import pad_targets
from fpn.model.box_ops import batched_ioa
from fpn.model.roi_heads import build_roi_heads
from fpn.model.ops import choose_ops
from fpn.model.rpn import build_rpn
from fpn.model.targets import crowd_ioa

CPU = torch.device("cpu")


def test_batched_ioa_is_the_fraction_of_each_box_inside_the_region():
    regions = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])  # (1, 1, 4)
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0], [5.0, 5.0, 15.0, 15.0], [20.0, 20.0, 30.0, 30.0], [3.0, 3.0, 3.0, 8.0]])
    assert batched_ioa(regions, boxes).tolist() == [[[1.0, 0.25, 0.0, 0.0]]]  # an empty box: 0


def test_pad_targets_keeps_crowd_regions_apart():
    objects = {"boxes": torch.tensor([[1.0, 1, 5, 5]]), "labels": torch.tensor([2])}
    plain = pad_targets([objects, objects], CPU)
    assert plain.crowd_boxes is None and crowd_ioa(plain, torch.zeros(3, 4)) is None  # VOC: nothing computed
    crowd = {**objects, "crowd_boxes": torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 40, 40]])}
    gt = pad_targets([objects, crowd, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}], CPU)
    assert gt.valid.tolist() == [[True], [True], [False]]  # crowd regions are not objects
    assert gt.crowd_boxes.shape == (3, 2, 4)
    assert gt.crowd_valid.tolist() == [[False, False], [True, True], [False, False]]
    ioa = crowd_ioa(gt, torch.tensor([[2.0, 2, 4, 4], [25.0, 25, 45, 45]]))  # (N, B)
    assert ioa.tolist() == [[0.0, 0.0], [1.0, 0.5625], [0.0, 0.0]]


def _heads_and_targets():
    cfg = synthetic()
    obj = {"boxes": torch.tensor([[60.0, 60, 90, 90]]), "labels": torch.tensor([1])}
    with_crowd = {**obj, "crowd_boxes": torch.tensor([[0.0, 0, 48, 48]])}
    return cfg, pad_targets([obj], CPU), pad_targets([with_crowd], CPU)


def test_rpn_ignores_anchors_inside_a_crowd_box():
    cfg, plain, crowd = _heads_and_targets()
    rpn = build_rpn(cfg, in_channels=8, ops=choose_ops("cpu"))
    anchors, _ = rpn.anchor_generator([(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)], CPU)
    _, labels_plain = rpn.label_anchors(anchors, plain)
    _, labels_crowd = rpn.label_anchors(anchors, crowd)
    inside = batched_ioa(crowd.crowd_boxes, anchors)[0, 0] >= cfg.model.crowd_ioa  # (A,)
    assert inside.sum() > 50
    assert (labels_plain[0][inside] == 0).all()  # without the crowd box: background
    assert (labels_crowd[0][inside] == -1).all()  # with it: neither background nor object
    assert torch.equal(labels_crowd[0][~inside], labels_plain[0][~inside])  # nothing else changes


def test_roi_heads_ignore_proposals_inside_a_crowd_box():
    cfg, plain, crowd = _heads_and_targets()
    heads = build_roi_heads(cfg, in_channels=8, num_classes=2, ops=choose_ops("cpu"))
    proposals = torch.tensor([[[2.0, 2, 30, 30], [10.0, 10, 46, 40], [40.0, 40, 56, 56], [62.0, 61, 90, 88]]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    _, _, labels_plain = heads.label_candidates(proposals, valid, plain)
    _, _, labels_crowd = heads.label_candidates(proposals, valid, crowd)
    # candidates: 4 proposals + the object itself; the first two lie inside the crowd box, the third a quarter
    assert labels_plain[0].tolist() == [0, 0, 0, 1, 1]
    assert labels_crowd[0].tolist() == [-1, -1, 0, 1, 1]
