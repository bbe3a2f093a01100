"""The batched (padded, loop-free) paths give exactly what a plain per-image implementation gives."""

import pytest
import torch
from torchvision.ops import box_iou, clip_boxes_to_image, nms, roi_align

from fpn.config import synthetic
from fpn.structures import pad_targets
from fpn.model.box_ops import batched_iou
from fpn.model.level_mapper import LevelMapper
from fpn.model.ops import POOLS, choose_ops
from fpn.model.roi_heads import MultiScaleRoIAlign, build_roi_heads
from fpn.model.rpn import build_rpn


def _random_boxes(g, k, size=100.0, min_wh=2.0, max_wh=60.0):
    xy = torch.rand(k, 2, generator=g) * size
    return torch.cat([xy, xy + min_wh + torch.rand(k, 2, generator=g) * (max_wh - min_wh)], 1)


def _targets(g, counts):
    return [{"boxes": _random_boxes(g, k), "labels": torch.randint(1, 4, (k,), generator=g)} for k in counts]


def _rpn(**model):
    cfg = synthetic()
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return build_rpn(cfg, in_channels=8, ops=choose_ops("cpu"))


def test_batched_iou_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    gt, boxes = _random_boxes(g, 5), _random_boxes(g, 40)
    torch.testing.assert_close(batched_iou(gt.unsqueeze(0), boxes)[0], box_iou(gt, boxes))


def reference_rpn_labels(gt_boxes, anchors, fg=0.7, bg=0.3):
    labels = torch.zeros(anchors.shape[0], dtype=torch.int64)
    matched = torch.zeros(anchors.shape[0], dtype=torch.int64)
    if gt_boxes.shape[0] == 0:
        return matched, labels
    iou = box_iou(gt_boxes, anchors)
    best, matched = iou.max(0)
    labels[:] = -1
    labels[best < bg] = 0
    labels[best >= fg] = 1
    for row in iou:  # every object keeps its best anchor(s)
        if row.max() > 0:
            labels[row == row.max()] = 1
    return matched, labels


def test_rpn_labelling_equals_per_image_reference():
    g = torch.Generator().manual_seed(1)
    rpn = _rpn()
    anchors, _ = rpn.anchor_generator([(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)], torch.device("cpu"))
    targets = _targets(g, [3, 0, 7, 1])
    matched, labels = rpn.label_anchors(anchors, pad_targets(targets, torch.device("cpu")))
    for i, t in enumerate(targets):
        ref_matched, ref_labels = reference_rpn_labels(t["boxes"], anchors)
        assert torch.equal(labels[i], ref_labels)
        pos = ref_labels == 1
        assert torch.equal(matched[i][pos], ref_matched[pos])
    assert (labels[0] == 1).any() and (labels[1] == 0).all()


def reference_roi_labels(proposals, gt_boxes, fg=0.5, bg_hi=0.5, bg_lo=0.0):
    candidates = torch.cat([proposals, gt_boxes])
    if gt_boxes.shape[0] == 0:
        return candidates, torch.zeros(len(candidates), dtype=torch.int64), torch.zeros(len(candidates), dtype=torch.int64)
    best, matched = box_iou(gt_boxes, candidates).max(0)
    labels = torch.full((len(candidates),), -1)
    labels[(best >= bg_lo) & (best < bg_hi)] = 0
    labels[best >= fg] = 1
    return candidates, matched, labels


def test_roi_labelling_equals_per_image_reference():
    g = torch.Generator().manual_seed(2)
    cfg = synthetic()
    cfg.model.roi_bg_iou_lo = 0.1
    heads = build_roi_heads(cfg, in_channels=8, num_classes=4, ops=choose_ops("cpu"))
    counts_prop, counts_gt = [30, 12, 0], [2, 0, 5]
    p = max(counts_prop)
    proposals = torch.zeros(3, p, 4)
    valid = torch.zeros(3, p, dtype=torch.bool)
    per_image = []
    for i, k in enumerate(counts_prop):
        boxes = _random_boxes(g, k)
        proposals[i, :k], valid[i, :k] = boxes, True
        per_image.append(boxes)
    targets = _targets(g, counts_gt)
    gt = pad_targets(targets, torch.device("cpu"))
    candidates, matched, labels = heads.label_candidates(proposals, valid, gt)
    for i in range(3):
        ref_cand, ref_matched, ref_labels = reference_roi_labels(per_image[i], targets[i]["boxes"], bg_lo=0.1)
        # the batched candidates are [padded proposals, padded gt]; keep the real ones in the same order
        real = torch.cat([valid[i], gt.valid[i]])
        assert torch.equal(candidates[i][real], ref_cand)
        assert torch.equal(labels[i][real], ref_labels)
        assert (labels[i][~real] == -1).all()
        pos = ref_labels == 1
        assert torch.equal(matched[i][real][pos], ref_matched[pos])
    assert (labels[0][p:p + 2] == 1).all() and (labels[2][p:p + 5] == 1).all()  # each object matches itself


def reference_proposals(rpn, anchors, counts, logits, deltas, size, pre_n, post_n, per_level):
    """One image, plainly: top-n per level (or overall), decode, clip, drop small, NMS, best post_n."""
    starts = torch.tensor([0] + counts).cumsum(0).tolist()
    chunks = list(zip(starts[:-1], counts)) if per_level else [(0, sum(counts))]
    boxes_all, scores_all = [], []
    for start, count in chunks:
        scores, idx = logits[start:start + count].topk(min(pre_n, count))
        idx = idx + start
        boxes = clip_boxes_to_image(rpn.box_coder.decode(deltas[idx], anchors[idx]), size)
        wh = boxes[:, 2:] - boxes[:, :2]
        ok = (wh >= rpn.min_size).all(1)
        boxes, scores = boxes[ok], scores[ok]
        keep = nms(boxes, scores, rpn.nms_thresh)
        boxes_all.append(boxes[keep])
        scores_all.append(scores[keep])
    boxes, scores = torch.cat(boxes_all), torch.cat(scores_all)
    return boxes[scores.argsort(descending=True)][:post_n]


def test_proposal_selection_equals_per_image_reference():
    g = torch.Generator().manual_seed(3)
    for per_level in (True, False):
        rpn = _rpn(rpn_pre_nms_top_n_train=60, rpn_post_nms_top_n_train=70, rpn_per_level_top_n=per_level,
                   rpn_min_size=4.0, rpn_nms_thresh=0.5)
        rpn.train()
        sizes = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]  # a 64 x 96 padded batch
        anchors, counts = rpn.anchor_generator(sizes, torch.device("cpu"))
        n = 3
        logits = torch.randn(n, anchors.shape[0], generator=g)
        deltas = torch.randn(n, anchors.shape[0], 4, generator=g) * 0.5
        deltas[:, ::7, 2:] = -3.0  # some tiny boxes for the min-size filter
        image_sizes = [(64, 96), (50, 70), (33, 96)]
        boxes, valid = rpn.select_proposals(anchors, counts, logits, deltas, torch.tensor(image_sizes, dtype=torch.float32))
        assert boxes.shape == (n, 70, 4)
        for i in range(n):
            ref = reference_proposals(rpn, anchors, counts, logits[i], deltas[i], image_sizes[i], 60, 70, per_level)
            assert int(valid[i].sum()) == len(ref)
            assert valid[i, :len(ref)].all()  # valid proposals first, best first
            assert torch.equal(boxes[i, :len(ref)], ref)
        assert (~valid).any() or per_level  # the joint mode (60 candidates) cannot fill 70 slots
        assert valid.sum(1).max() == 70 or not per_level  # per level, some image has more than 70 survivors


@pytest.mark.parametrize("pool", ["torchvision", "sparse", "by_mask"])
def test_multiscale_roi_align_equals_per_roi_reference(pool):
    g = torch.Generator().manual_seed(4)
    feats = [torch.randn(2, 3, 32 // 2**i, 48 // 2**i, generator=g) for i in range(4)]
    mapper = LevelMapper(canonical_size=56, canonical_level=4)
    pooler = MultiScaleRoIAlign((4, 8, 16, 32), output_size=7, sampling_ratio=2, mapper=mapper,
                                pool=POOLS[pool])
    boxes = torch.stack([_random_boxes(g, 9, size=100, max_wh=100), _random_boxes(g, 9, size=100, max_wh=100)])
    out = pooler(feats, boxes)
    assert out.shape == (18, 3, 7, 7)
    levels = mapper(boxes.reshape(-1, 4))
    assert len(set(levels.tolist())) >= 3
    for r in range(18):
        img, lvl = r // 9, int(levels[r]) - 2
        roi = torch.cat([torch.tensor([[0.0]]), boxes[img, r % 9].unsqueeze(0)], 1)
        ref = roi_align(feats[lvl][img:img + 1], roi, 7, 1.0 / 2 ** (lvl + 2), 2, aligned=True)
        torch.testing.assert_close(out[r:r + 1], ref)


def test_sigmoid_ranking_equals_torchvision_proposal_filter_with_ties():
    """rpn_score="sigmoid": torchvision's proposals exactly, also when high logits round to one float32 probability
    (here every logit above ~16.6 is 1.0): NMS then keeps the first of tied boxes, not the higher logit."""
    from torchvision.models.detection.rpn import RegionProposalNetwork

    g = torch.Generator().manual_seed(5)
    rpn = _rpn(rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=120, rpn_nms_thresh=0.5, rpn_score="sigmoid")
    rpn.eval()
    reference = RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5, {"testing": 150}, {"testing": 120}, 0.5).eval()
    sizes = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    anchors, counts = rpn.anchor_generator(sizes, torch.device("cpu"))
    n = 2
    logits = torch.randn(n, anchors.shape[0], generator=g) * 10 + 8  # a quarter above 16.6
    deltas = torch.randn(n, anchors.shape[0], 4, generator=g) * 0.3
    image_sizes = [(64, 96), (50, 70)]
    boxes, valid = rpn.select_proposals(anchors, counts, logits, deltas, torch.tensor(image_sizes, dtype=torch.float32))
    decoded = reference.box_coder.decode(deltas.reshape(-1, 4), [anchors] * n).view(n, -1, 4)
    expected, _ = reference.filter_proposals(decoded, logits.reshape(-1, 1), image_sizes, counts)
    for i in range(n):
        ours = boxes[i][valid[i]]
        assert ours.shape == expected[i].shape
        assert torch.equal(torch.unique(ours, dim=0), torch.unique(expected[i], dim=0))  # the same set (rows sorted)
    by_logit = _rpn(rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=120, rpn_nms_thresh=0.5).eval()
    other, other_valid = by_logit.select_proposals(anchors, counts, logits, deltas, torch.tensor(image_sizes, dtype=torch.float32))
    assert not torch.equal(torch.unique(other[0][other_valid[0]], dim=0), torch.unique(expected[0], dim=0))
