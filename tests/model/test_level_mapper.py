import torch

from fpn.model.level_mapper import LevelMapper


def _square(side):
    return [0.0, 0.0, float(side), float(side)]


def test_levels_of_canonical_sizes():
    mapper = LevelMapper(canonical_size=224, canonical_level=4)
    boxes = torch.tensor([_square(s) for s in (224, 112, 448, 8, 2000, 223, 0)] + [[10.0, 10.0, 66.0, 122.0]])
    # 223 is just under the canonical size -> level 3; an empty box -> lowest level; 56 x 112 -> sqrt = 79.2 -> 2
    assert mapper(boxes).tolist() == [4, 3, 5, 2, 5, 3, 2, 2]


def test_synthetic_canonical_size():
    mapper = LevelMapper(canonical_size=112, canonical_level=4)
    assert mapper(torch.tensor([_square(s) for s in (112, 56, 224, 28, 27)])).tolist() == [4, 3, 5, 2, 2]


def test_torchvision_eps_placement_matches_its_level_mapper():
    """eps_in_log=False is torchvision's rule: the same levels as its LevelMapper on random boxes and on sizes just
    under 224 (a level boundary), where the two placements of eps disagree for some."""
    from torchvision.ops.poolers import LevelMapper as TorchvisionMapper

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 300
    random_boxes = torch.cat([xy, xy + torch.exp(torch.rand(500, 2, generator=g) * 6) + 1], dim=1)
    near = torch.tensor([_square(224 * (1 - k * 1e-7)) for k in range(40)])
    boxes = torch.cat([random_boxes, near])
    reference = TorchvisionMapper(2, 5)([boxes]) + 2
    ours = LevelMapper(canonical_size=224, canonical_level=4, eps_in_log=False)
    assert torch.equal(ours(boxes), reference)
    default = LevelMapper(canonical_size=224, canonical_level=4)(boxes)
    assert torch.equal(default[:500], reference[:500]) and not torch.equal(default[500:], reference[500:])
