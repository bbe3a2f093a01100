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
