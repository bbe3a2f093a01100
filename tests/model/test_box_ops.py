import torch

from fpn.model.box_ops import rank_within_groups


def test_rank_within_groups_keeps_priority_order():
    groups = torch.tensor([2, 0, 2, 1, 0, 2])
    order, rank = rank_within_groups(groups, 4)
    assert order.tolist() == [1, 4, 3, 0, 2, 5] and rank.tolist() == [0, 1, 0, 0, 1, 2]
