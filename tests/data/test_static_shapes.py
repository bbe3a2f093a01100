"""Static shapes (issue 28): full batches per epoch (issue 29), padded-size buckets, a fixed ground-truth
capacity, normalisation after the copy."""

import math

import numpy as np
import pytest
import torch

from fpn.data.loader import Collator, GroupedBatchSampler, build_train_loader, object_capacity
from fpn.data.transforms import PadRule, batch_images, normalize, normalize_batch, target_size
from fpn.errors import UserError
from fpn.structures import pad_targets

GROUPS = np.array([0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 0])  # 8 landscape, 5 portrait


# --- full batches (issue 29: "1601 iterations for a 1600-iteration run") ---------------------------------------


def test_full_batches_make_items_over_batch_size_batches_of_one_group():
    s = GroupedBatchSampler(GROUPS, 3, (600,), seed=1, full_batches=True)
    assert len(s) == 13 // 3 == 4  # not ceil(8/3) + ceil(5/3) = 5
    for epoch in range(6):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == 4 and all(len(b) == 3 for b in batches)
        for b in batches:
            assert len({int(GROUPS[i]) for i, _ in b}) == 1
        items = [i for b in batches for i, _ in b]
        # 8 = 2x3 + 2, 5 = 3 + 2: one leftover pair is completed by a repeat of its group, the other dropped
        assert len(set(items)) == 11 and len(items) == 12


@pytest.mark.parametrize("landscape", [3201, 3200, 3203, 6400])
def test_issue_29_6400_images_at_batch_4_are_1600_iterations(landscape):
    groups = np.array([0] * landscape + [1] * (6400 - landscape))
    mirrored = np.tile(groups, 2)  # the synthetic preset: flip with flip_random, each image once an epoch
    for ids, mirror in ((groups, False), (mirrored, True)):
        s = GroupedBatchSampler(ids, 4, (192,), seed=0, random_mirror=mirror, full_batches=True)
        assert len(s) == 1600 == len(s.epoch_batches(0)) == len(s.epoch_batches(1))
    assert len(GroupedBatchSampler(groups, 4, (192,))) == 1600 + (landscape % 4 != 0)  # the test loader's: all


def test_full_batches_with_ranks_and_tiny_groups():
    ranks = [GroupedBatchSampler(GROUPS, 2, (600,), seed=5, rank=r, world_size=3, full_batches=True)
             for r in range(3)]  # fmt: skip
    assert [len(s) for s in ranks] == [2, 2, 2]  # 13 // 2 = 6 batches
    seen = [{i for b in s.epoch_batches(3) for i, _ in b} for s in ranks]
    assert not (seen[0] & seen[1] | seen[0] & seen[2] | seen[1] & seen[2])
    # 8 items make 2 batches: group 1's full one, and group 0's two items completed cyclically from itself
    s = GroupedBatchSampler([0, 0, 1, 1, 1, 1, 1, 1], 4, (600,), shuffle=False, full_batches=True)
    assert [[i for i, _ in b] for b in s] == [[0, 1, 0, 1], [2, 3, 4, 5]]
    with pytest.raises(UserError, match="3 images make 0 full batches of 4"):
        GroupedBatchSampler([0, 0, 1], 4, (600,), full_batches=True)


def test_train_loader_length_is_the_iterations_it_gives(voc_folder):
    """What the start line says (``len(loader)`` iterations an epoch) is what an epoch runs: 3 images and their
    mirrors (2 landscape and 1 portrait, twice) at batch 4 are 6 // 4 = 1 full batch (before: 2 + 1 = 3)."""
    from fpn.config import Config
    from fpn.data.records import ImageSet, load_records

    classes = ("cat", "dog")
    records = load_records([ImageSet(voc_folder, "trainval")], classes, cache_dir=voc_folder.parent / "cache")
    cfg = Config()
    cfg.data.train_scales, cfg.data.max_size, cfg.data.workers, cfg.solver.batch_size = (96,), 160, 0, 4
    loader = build_train_loader(cfg, records, classes)
    for epoch in (1, 2):
        loader.batch_sampler.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader) == (2 * len(records)) // cfg.solver.batch_size  # flip: 2 items each
        assert all(len(b) == cfg.solver.batch_size for b in batches)


# --- padded-size buckets -------------------------------------------------------------------------------------


def test_pad_rule_buckets():
    today = PadRule(32)
    assert today([(600, 800), (590, 810)]) == (608, 832)
    rule = PadRule(32, 64, 600, 1000)
    assert rule([(600, 800)]) == (608, 832)  # the shorter side's limit (600 -> 608) is a bucket
    assert rule([(600, 1000)]) == (608, 1024) and rule([(600, 610)]) == (608, 640)
    assert rule([(450, 1000)]) == (512, 1024)  # a wide image: a multiple of 64 under the limit
    assert rule([(800, 600)]) == (832, 608)  # portrait: the same rule, sides swapped
    assert rule([(700, 1200)]) == (704, 1216)  # larger than the resize rule makes: multiples of 64
    assert PadRule(32, 128, 600, 1000)([(600, 650)]) == (608, 768)
    with pytest.raises(UserError, match="pad bucket 48: expected 0 or a multiple of size_divisible"):
        PadRule(32, 48, 600, 1000)


def _random_sizes(n, seed, scale, max_size):
    """Resized (h, w) of n images of random aspect (1/2..2) and size, under the resize rule."""
    rng = np.random.default_rng(seed)
    sizes = []
    for _ in range(n):
        long_side, aspect = int(rng.integers(120, 500)), math.exp(rng.uniform(-math.log(2), math.log(2)))
        h, w = (round(long_side / aspect), long_side) if aspect >= 1 else (long_side, round(long_side * aspect))
        sizes.append(target_size(h, w, scale, max_size))
    return sizes


def test_twenty_batches_give_at_most_one_shape_per_bucket():
    """20 batches of 2 different images (sizes, aspects 1/2..2) at scale 600 / max 1000: with 64-pixel buckets
    each padded shape is a bucket, a few per orientation, against one per size without; the ground truth's
    shape is one for all."""
    scale, max_size, bs = 600, 1000, 2
    sizes = _random_sizes(40, 0, scale, max_size)
    groups = [int(w < h) for h, w in sizes]
    batches = GroupedBatchSampler(groups, bs, (scale,), seed=0, full_batches=True).epoch_batches(0)
    assert len(batches) == 20
    # the buckets: the shorter side 608 (its limit) or a multiple of 64 below; the longer 640, 704, ..., 1024
    short, long = {64 * k for k in range(1, 10)} | {608}, {64 * k for k in range(10, 17)}
    possible = {0: {(h, w) for h in short for w in long}, 1: {(h, w) for h in long for w in short}}
    shapes = {rule: {0: set(), 1: set()} for rule in ("today", "buckets")}
    for b in batches:
        for name, rule in (("today", PadRule(32)), ("buckets", PadRule(32, 64, scale, max_size))):
            shapes[name][groups[b[0][0]]].add(rule([sizes[i] for i, _ in b]))  # what the Collator pads to
    assert shapes["buckets"][0] <= possible[0] and shapes["buckets"][1] <= possible[1]
    assert {g: len(s) for g, s in shapes["buckets"].items()} == {0: 5, 1: 4}
    assert {g: len(s) for g, s in shapes["today"].items()} == {0: 8, 1: 4}
    # the Collator pads to the rule's shape, and the ground truth to its capacity whatever the batch holds
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}, _targets()[0]]
    images = [torch.zeros(3, 600, 700, dtype=torch.uint8), torch.zeros(3, 500, 1000, dtype=torch.uint8)]
    batch = Collator(32, "imagenet", pad=PadRule(32, 64, scale, max_size), max_objects=8)(
        list(zip(images, targets, [{}, {}])))  # fmt: skip
    assert batch.pixels.shape == (2, 3, 608, 1024) and batch.gt.boxes.shape == (2, 8, 4)


@pytest.mark.slow
def test_the_training_step_compiles_once_per_bucket():
    """``torch.compile`` (fullgraph, a counting backend, static shapes) of a tiny model's training forward + losses
    over 20 batches of differently sized images with 1-3 objects each: one graph per padded shape (the ground
    truth has one shape throughout), so no more graphs than buckets."""
    from tiny_model import tiny_config

    from fpn.model import build_detector

    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.runtime.compile = "eager"  # the compile-friendly ops (opaque NMS); compiled below with a counting backend
    model = build_detector(cfg, 4, load_pretrained=False).train()
    compiled = []

    def counting(gm, example_inputs):
        compiled.append(gm)
        return gm.forward

    torch._dynamo.reset()
    losses = torch.compile(model._plain_losses, backend=counting, fullgraph=True, dynamic=False)
    scale, max_size, bs = 128, 192, 2
    sizes = _random_sizes(40, 1, scale, max_size)
    groups = [int(w < h) for h, w in sizes]
    rule = PadRule(32, 64, scale, max_size)
    g = torch.Generator().manual_seed(0)
    shapes, gt_shapes = set(), set()
    for n, b in enumerate(GroupedBatchSampler(groups, bs, (scale,), seed=0,
                                                                 full_batches=True).epoch_batches(0)):
        images = [torch.zeros(3, *sizes[i], dtype=torch.uint8) for i, _ in b]
        pixels, image_sizes = batch_images(images, None, pad=rule)
        x = normalize_batch(pixels, image_sizes, "imagenet")
        targets = []
        for i, _ in b:
            h, w = sizes[i]
            k = int(torch.randint(1, 4, (1,), generator=g))
            xy = torch.rand(k, 2, generator=g) * torch.tensor([w / 2, h / 2])
            targets.append({"boxes": torch.cat([xy, xy + torch.tensor([w / 3, h / 3])], 1),
                            "labels": torch.randint(1, 4, (k,), generator=g)})  # fmt: skip
        gt = pad_targets(targets, "cpu", capacity=8)
        shapes.add(tuple(x.shape))
        gt_shapes.add(tuple(gt.boxes.shape))
        losses(x, torch.tensor(image_sizes, dtype=torch.float32), gt)
    torch._dynamo.reset()
    # shorter side buckets {64, 128}, longer {64, 128, 192}: at most 3 + 3 shapes over both orientations
    assert n + 1 == 20 and len(shapes) <= 6 and gt_shapes == {(2, 8, 4)}
    assert len(compiled) == len(shapes)


def test_normalize_batch_is_the_host_normalisation_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=g)
    b = torch.randint(0, 256, (3, 40, 90), dtype=torch.uint8, generator=g)
    for mode in ("imagenet", "caffe"):
        for images in ([a, b], [a.float() * 0.999, b.float() * 1.001]):  # uint8 (training), float (test time)
            before, sizes = batch_images(images, mode)  # normalised per image on the host, as before issue 28
            pixels, same_sizes = batch_images(images, None, pad=PadRule(32, 64, 600, 1000))
            assert pixels.dtype == images[0].dtype and sizes == same_sizes
            after = normalize_batch(pixels, sizes, mode)
            assert after.shape == (2, 3, 64, 128)
            assert torch.equal(after[:, :, :64, :96], before)
            assert (after[:, :, :, 96:] == 0).all() and torch.equal(after[0, :, :50, :70], normalize(images[0], mode))


# --- ground truth of a fixed capacity ------------------------------------------------------------------------


def _targets():
    return [
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [70.0, 20.0, 120.0, 50.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
         "crowd_boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]])},
    ]  # fmt: skip


def test_pad_targets_to_a_capacity():
    tight, fixed = pad_targets(_targets(), "cpu"), pad_targets(_targets(), "cpu", capacity=8, crowd_capacity=3)
    assert tight.boxes.shape == (2, 2, 4) and fixed.boxes.shape == (2, 8, 4) and fixed.labels.shape == (2, 8)
    assert torch.equal(fixed.boxes[:, :2], tight.boxes) and torch.equal(fixed.valid[:, :2], tight.valid)
    assert not fixed.valid[:, 2:].any() and not fixed.boxes[:, 2:].any() and not fixed.labels[:, 2:].any()
    assert fixed.crowd_boxes.shape == (2, 3, 4) and fixed.crowd_valid.tolist() == [[False] * 3, [True, False, False]]
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    assert pad_targets(empty, "cpu", 8, 2).crowd_boxes.shape == (1, 2, 4)  # present though no image has any
    assert pad_targets(empty, "cpu").crowd_boxes is None
    with pytest.raises(ValueError, match="2 objects, more than the ground truth's capacity of 1"):
        pad_targets(_targets(), "cpu", capacity=1)


def test_object_capacity_from_the_records():
    def record(k, crowd=0, difficult=0):
        n = k + crowd
        return {"image": f"img{k}.jpg", "labels": [1] * n, "crowd": [False] * k + [True] * crowd,
                "difficult": [False] * (k - difficult) + [True] * difficult + [False] * crowd}  # fmt: skip

    records = [record(3), record(9, crowd=2), record(20, difficult=5)]
    assert object_capacity(records, 0) == (16, 2)  # 15 objects (the difficult ones left out) -> 16
    assert object_capacity(records, 0, use_difficult=True) == (24, 2)
    assert object_capacity(records[:1], 0) == (8, 0)  # at least 8; no crowd anywhere: none
    assert object_capacity(records, -1) == (0, 0)  # each batch's own
    assert object_capacity(records, 15) == (15, 2)
    with pytest.raises(UserError, match=r"data.max_objects=10: img20.jpg has 15 objects; raise it to at least 15"):
        object_capacity(records, 10)


# --- test-time buckets -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_test_time_buckets_detections(tiny_checkpoint, one_thread):
    """The Python API with ``data.test_pad_bucket=64`` (test scale 128 / max 192: sides 64, 128 or 192): an image
    whose padded size is a bucket already gets today's detections (up to float rounding: it may now share a batch
    with others); one padded more may not: a convolution's output over the zero padding is not zero (biases,
    norms), so features near the bottom/right border see more of it, and anchors over the padding add proposals
    (clipped to the image) to the RPN's top-n and NMS (on this briefly trained model even the best detection can
    change). Hence data.test_pad_bucket is 0 unless asked for."""
    from tiny_model import parity_images, tiny_config

    from fpn.api import Detector

    images = parity_images()
    plain = Detector.from_checkpoint(tiny_checkpoint, device="cpu", amp="none").predict(images)
    bucketed = Detector.from_checkpoint(tiny_checkpoint, device="cpu", amp="none",
                                        overrides=["data.test_pad_bucket=64"]).predict(images)  # fmt: skip
    d = tiny_config().data
    changed = []
    for im, a, b in zip(images, plain, bucketed):
        size = [target_size(*im.shape[-2:], d.test_scale, d.max_size)]
        if PadRule(32)(size) == PadRule(32, 64, d.test_scale, d.max_size)(size):
            assert len(a) == len(b) and (a.labels == b.labels).all()
            np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        else:
            changed.append(tuple(im.shape[-2:]))
    assert changed == [(128, 160), (413, 419), (360, 150), (120, 150)]
