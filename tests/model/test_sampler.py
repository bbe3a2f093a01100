import torch

from fpn.model.sampler import BalancedSampler


def _labels(num_pos, num_neg, num_ignore):
    labels = torch.tensor([1] * num_pos + [0] * num_neg + [-1] * num_ignore)
    return labels[torch.randperm(labels.numel())]


def test_exact_counts_many_positives():
    torch.manual_seed(0)
    labels = torch.stack([_labels(10, 30, 5), _labels(2, 40, 3), _labels(0, 45, 0)])  # (3, 45)
    s = BalancedSampler(batch_per_image=16, positive_fraction=0.25)(labels)
    assert s.index.shape == (3, 16)
    assert s.is_pos.sum(1).tolist() == [4, 2, 0]  # capped at 4; fewer available -> all of them
    assert (s.valid & ~s.is_pos).sum(1).tolist() == [12, 14, 16]  # negatives fill the batch
    picked = labels.gather(1, s.index)
    assert (picked[s.is_pos] == 1).all() and (picked[s.valid & ~s.is_pos] == 0).all()
    for row in range(3):  # no candidate twice
        assert s.index[row][s.valid[row]].unique().numel() == int(s.valid[row].sum())
    assert s.is_pos[0].tolist() == [True] * 4 + [False] * 12  # positives first


def test_too_few_candidates_leaves_invalid_slots():
    labels = torch.tensor([[1, 1, 1, 0, 0, -1, -1, -1]])
    s = BalancedSampler(batch_per_image=6, positive_fraction=0.5)(labels)
    assert s.is_pos.tolist() == [[True, True, True, False, False, False]]
    assert s.valid.tolist() == [[True, True, True, True, True, False]]
    assert sorted(s.index[0, :3].tolist()) == [0, 1, 2] and sorted(s.index[0, 3:5].tolist()) == [3, 4]


def test_sampling_is_random():
    torch.manual_seed(0)
    labels = torch.tensor([[1] * 10 + [0] * 30])
    sampler = BalancedSampler(batch_per_image=16, positive_fraction=0.25)
    seen = set()
    for _ in range(30):
        s = sampler(labels)
        seen.update(s.index[s.is_pos].tolist())
    assert seen == set(range(10))
