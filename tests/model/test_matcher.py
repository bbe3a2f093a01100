import torch

from fpn.model.matcher import Matcher

# 3 ground truths x 4 anchors
IOU = torch.tensor(
    [
        [0.6, 0.1, 0.6, 0.2],  # gt0: best 0.6 at anchors 0 and 2 (a tie)
        [0.1, 0.5, 0.65, 0.1],  # gt1: best 0.65 at anchor 2
        [0.0, 0.0, 0.0, 0.0],  # gt2: overlaps nothing -> no low-quality match for it
    ]
)


def test_rpn_rule_with_low_quality_matches():
    matcher = Matcher(fg_thresh=0.7, bg_hi=0.3, bg_lo=0.0, allow_low_quality=True)
    matched, labels = matcher(IOU.unsqueeze(0), torch.ones(1, 3, dtype=torch.bool))
    # a0: 0.6 is between the thresholds but it is (tied) best for gt0 -> positive
    # a1: 0.5 between the thresholds, best for nobody -> ignored
    # a2: best for gt0 and gt1, argmax gt1 -> positive matched to gt1
    # a3: 0.2 < 0.3 -> negative
    assert labels.tolist() == [[1, -1, 1, 0]]
    assert matched[0, [0, 2]].tolist() == [0, 1]


def test_without_low_quality_matches():
    matcher = Matcher(fg_thresh=0.7, bg_hi=0.3, bg_lo=0.0, allow_low_quality=False)
    _, labels = matcher(IOU.unsqueeze(0), torch.ones(1, 3, dtype=torch.bool))
    assert labels.tolist() == [[-1, -1, -1, 0]]


def test_roi_rule_background_interval():
    matcher = Matcher(fg_thresh=0.5, bg_hi=0.5, bg_lo=0.15)
    matched, labels = matcher(IOU.unsqueeze(0), torch.ones(1, 3, dtype=torch.bool))
    # best IoU per anchor 0.6, 0.5, 0.65, 0.2: fg, fg, fg, bg
    assert labels.tolist() == [[1, 1, 1, 0]]
    assert matched[0, :3].tolist() == [0, 1, 1]
    _, labels = matcher(torch.tensor([[[0.1, 0.15, 0.49, 0.0]]] * 2), torch.tensor([[True], [False]]))
    # below bg_lo -> ignored; but an image without objects has only negatives
    assert labels.tolist() == [[-1, 0, 0, -1], [0, 0, 0, 0]]


def test_padded_ground_truth_never_matches_and_empty_image_is_all_negative():
    matcher = Matcher(fg_thresh=0.7, bg_hi=0.3, allow_low_quality=True)
    iou = torch.stack([torch.cat([IOU, torch.full((1, 4), 0.99)]), torch.full((4, 4), 0.99)])  # (2, 4, 4)
    valid = torch.tensor([[True, True, True, False], [False, False, False, False]])
    matched, labels = matcher(iou, valid)
    assert labels.tolist() == [[1, -1, 1, 0], [0, 0, 0, 0]]
    assert matched[0, [0, 2]].tolist() == [0, 1]


def test_candidates_inside_crowd_regions_are_ignored_unless_positive():
    matcher = Matcher(fg_thresh=0.7, bg_hi=0.3, allow_low_quality=True, crowd_thresh=0.7)
    iou = IOU.unsqueeze(0)
    crowd_ioa = torch.tensor([[0.9, 0.9, 0.9, 0.7]])  # a0, a2 positive; a1 ignored anyway; a3 a negative
    _, labels = matcher(iou, torch.ones(1, 3, dtype=torch.bool), crowd_ioa)
    assert labels.tolist() == [[1, -1, 1, -1]]  # a3 (0.7 >= 0.7 inside a crowd region) is no longer background
    _, labels = matcher(iou, torch.ones(1, 3, dtype=torch.bool), torch.tensor([[0.9, 0.9, 0.9, 0.69]]))
    assert labels.tolist() == [[1, -1, 1, 0]]
    # an image whose only annotations are crowd regions: negatives outside them, ignored inside
    _, labels = matcher(torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.bool), torch.tensor([[0.0, 1.0, 0.2, 0.8]]))
    assert labels.tolist() == [[0, -1, 0, -1]]
