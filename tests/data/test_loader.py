import numpy as np
import pytest
import torch

from fpn.config import Config
from fpn.data.records import ImageSet, load_records
from fpn.data.loader import (
    Batch,
    Collator,
    DetectionDataset,
    GroupedBatchSampler,
    LoadFailure,
    build_test_loader,
    build_train_loader,
)
from fpn.data.transforms import normalize, prepare, read_image
from fpn.errors import UserError

CLASSES = ("cat", "dog")


def _records(root):
    return load_records([ImageSet(root, "trainval")], CLASSES, cache_dir=root.parent / "cache")


def _cfg(**data) -> Config:
    cfg = Config()
    cfg.data.train_scales, cfg.data.test_scale, cfg.data.max_size = (96,), 96, 160
    cfg.data.workers = 0
    cfg.solver.batch_size = 2
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


# --- grouped batch sampler ---------------------------------------------------------------------------------

GROUPS = np.array([0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 0])  # 8 landscape, 5 portrait


def _indices(batches):
    return [i for b in batches for i, _ in b]


def test_sampler_groups_never_mixed_and_each_index_once():
    s = GroupedBatchSampler(GROUPS, 3, (600,), seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 3 + 2  # ceil(8/3) + ceil(5/3)
    for b in batches:
        assert len({int(GROUPS[i]) for i, _ in b}) == 1 and 1 <= len(b) <= 3
        assert all(scale == 600 for _, scale in b)
    assert sorted(_indices(batches)) == list(range(len(GROUPS)))


def test_sampler_deterministic_per_seed_and_epoch():
    def order(seed, epoch):
        s = GroupedBatchSampler(GROUPS, 2, (600,), seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert order(0, 3) == order(0, 3)
    assert order(0, 3) != order(0, 4)
    assert order(0, 3) != order(1, 3)
    for epoch in range(5):
        assert sorted(_indices(order(0, epoch))) == list(range(len(GROUPS)))


def test_sampler_multi_scale_per_image_deterministic():
    s = GroupedBatchSampler(np.zeros(400, int), 4, (480, 600, 720), seed=0)
    s.set_epoch(2)
    a, b = list(s), list(s)
    assert a == b
    scales = [sc for batch in a for _, sc in batch]
    assert set(scales) == {480, 600, 720}
    assert len({tuple(sc for _, sc in batch) for batch in a}) > 1  # drawn per image, not per batch
    s.set_epoch(3)
    assert [sc for batch in s for _, sc in batch] != scales


def test_sampler_ranks_disjoint_equal_lengths():
    ranks = [GroupedBatchSampler(GROUPS, 2, (600,), seed=5, rank=r, world_size=3) for r in range(3)]
    for s in ranks:
        s.set_epoch(7)
    # 4 + 3 = 7 batches -> 2 per rank (one leftover batch skipped this epoch)
    assert [len(s) for s in ranks] == [2, 2, 2] and [len(list(s)) for s in ranks] == [2, 2, 2]
    seen = [set(_indices(list(s))) for s in ranks]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    single = GroupedBatchSampler(GROUPS, 2, (600,), seed=5)
    single.set_epoch(7)
    everything = list(single)  # the ranks take turns through the same epoch order
    assert [list(s)[0] for s in ranks] == everything[:3]
    with pytest.raises(UserError, match="too few for 8 processes"):
        GroupedBatchSampler(GROUPS, 2, (600,), rank=0, world_size=8)


def test_sampler_start_iter_skips_batches():
    s = GroupedBatchSampler(GROUPS, 2, (600,), seed=0)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, start_iter=3)
    assert list(s) == full[3:] and len(s) == len(full)
    s.set_epoch(5)
    assert len(list(s)) == len(full)
    with pytest.raises(ValueError):
        s.set_epoch(0, start_iter=len(full) + 1)


def test_sampler_without_shuffle_keeps_order_within_groups():
    s = GroupedBatchSampler(GROUPS, 3, (96,), shuffle=False)
    assert [[i for i, _ in b] for b in s] == [[0, 2, 3], [1, 4, 5], [6, 8, 9], [7, 11], [10, 12]]



def test_sampler_random_mirror_takes_each_image_once_an_epoch():
    groups = np.tile(GROUPS, 2)  # items 13..25 mirror 0..12
    s = GroupedBatchSampler(groups, 3, (600,), seed=2, random_mirror=True)
    assert len(s) == 3 + 2  # as many batches as without mirrors
    mirrored = []
    for epoch in range(6):
        s.set_epoch(epoch)
        items = _indices(list(s))
        assert sorted(i % 13 for i in items) == list(range(13))  # every image once, itself or its mirror
        mirrored.append(sum(i >= 13 for i in items))
        for b in s:
            assert len({int(groups[i]) for i, _ in b}) == 1
    assert 0 < sum(mirrored) < 6 * 13 and len(set(mirrored)) > 1  # a fresh coin per image and epoch
    s.set_epoch(3)
    again = GroupedBatchSampler(groups, 3, (600,), seed=2, random_mirror=True)
    again.set_epoch(3)
    assert list(s) == list(again)
    with pytest.raises(ValueError, match="pairs"):
        GroupedBatchSampler(GROUPS, 3, (600,), random_mirror=True)

# --- collate -----------------------------------------------------------------------------------------------


def test_collate_pads_to_multiple_and_normalises():
    a = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    b = torch.randint(0, 256, (3, 40, 90), dtype=torch.uint8)
    ta = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    tb = {"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "labels": torch.tensor([2])}
    batch = Collator(32, "imagenet")([(a, ta, {"id": "a"}), (b, tb, {"id": "b"})])
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.images.shape == (2, 3, 64, 96) and batch.images.dtype == torch.float32
    assert batch.pixels.dtype == torch.uint8 and batch.pixels.shape == (2, 3, 64, 96)  # normalised after the copy
    assert batch.image_sizes == [(50, 70), (40, 90)]
    # the same bits as normalising each image on the host (what the collator did before issue 28)
    assert torch.equal(batch.images[0, :, :50, :70], normalize(a, "imagenet"))
    assert torch.equal(batch.images[1, :, :40, :90], normalize(b, "imagenet"))
    assert (batch.images[0, :, 50:, :] == 0).all() and (batch.images[0, :, :, 70:] == 0).all()
    assert (batch.images[1, :, 40:, :] == 0).all() and (batch.images[1, :, :, 90:] == 0).all()
    assert batch.targets == [ta, tb] and [m["id"] for m in batch.metas] == ["a", "b"]
    assert Collator(1)([(a, ta, {})]).images.shape == (1, 3, 50, 70)
    failure = LoadFailure("x.jpg: cannot read image")
    assert Collator(32)([(a, ta, {}), failure]) is failure


def test_batch_to_moves_everything():
    target = {"boxes": torch.zeros(1, 4), "labels": torch.ones(1, dtype=torch.int64)}
    batch = Batch(torch.zeros(1, 3, 32, 32), [(30, 20)], [target], [{}])
    moved = batch.to("cpu", non_blocking=True)
    assert moved.images.device.type == "cpu" and moved.targets[0]["labels"].dtype == torch.int64
    assert moved.image_sizes == [(30, 20)]


# --- dataset ---------------------------------------------------------------------------------------------------


def test_dataset_flip_difficult_and_empty_images(voc_folder):
    recs = _records(voc_folder)
    ds = DetectionDataset(recs, default_scale=96, max_size=160, flip=True)
    assert len(ds) == 6
    assert ds.group_ids().tolist() == [0, 1, 0, 0, 1, 0]
    img, target, meta = ds[0]  # "a": 64x48 -> 128x96 (factor 2); the difficult dog is dropped
    assert img.shape == (3, 96, 128) and img.dtype == torch.uint8
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 0.0, 64.0, 48.0]]), rtol=0, atol=0)
    assert target["labels"].tolist() == [1]
    assert meta == {"id": "a", "image": recs[0]["image"], "orig_size": (48, 64), "scale": 2.0, "flipped": False}
    _, target, meta = ds[(3, 48)]  # mirror of "a" at scale 48 (factor 1): x1' = 64 - 32 = 32
    torch.testing.assert_close(target["boxes"], torch.tensor([[32.0, 0.0, 64.0, 24.0]]), rtol=0, atol=0)
    assert meta["flipped"] and meta["scale"] == 1.0
    img, target, _ = ds[2]  # "c": no objects, still an item
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    keep = DetectionDataset(recs, default_scale=96, max_size=160, use_difficult=True)
    assert len(keep) == 3 and keep[0][1]["labels"].tolist() == [1, 2]
    with pytest.raises(IndexError):
        keep[3]


def test_crowd_regions_are_no_objects_and_travel_with_the_image_as_crowd_boxes(voc_folder):
    rec = {"id": "x", "image": str(voc_folder / "JPEGImages" / "a.jpg"), "width": 64, "height": 48,
           "labels": np.array([1, 2, 1]), "boxes": np.array([[0, 0, 32, 24], [8, 8, 16, 16], [40, 0, 64, 48.0]]),
           "difficult": np.array([False, True, True]), "crowd": np.array([False, False, True])}  # fmt: skip
    ds = DetectionDataset([rec], default_scale=96, max_size=160, flip=True, use_difficult=True)
    _, target, _ = ds[(1, 48)]  # the mirror, factor 1
    assert target["boxes"].tolist() == [[32, 0, 64, 24], [48, 8, 56, 16]]  # the difficult object kept (use_difficult)
    assert target["labels"].tolist() == [1, 2]
    assert target["crowd_boxes"].tolist() == [[0, 0, 24, 48]]  # mirrored too; never an object, even with use_difficult


def test_dataset_torchvision_resize_gives_normalised_floats_the_collator_copies(voc_folder):
    """resize="torchvision": items are already normalised float32 (the per-axis boxes of torchvision's transform);
    the Collator pads them unchanged, so the batch is prepare()'s output."""
    recs = _records(voc_folder)
    ds = DetectionDataset(recs, default_scale=96, max_size=160, flip=True, resize="torchvision", normalization="caffe")
    img, target, meta = ds[4]  # mirror of "b": 40x60 -> 96x144 (s = 2.4)
    assert img.dtype == torch.float32 and img.shape == (3, 144, 96) and meta["scale"] == 2.4
    expected, boxes, _ = prepare(read_image(recs[1]["image"]), torch.tensor([[4.0, 5.0, 30.0, 50.0]]), 96, 160,
                                 "caffe", flip=True, resize="torchvision")  # fmt: skip
    assert torch.equal(img, expected) and torch.equal(target["boxes"], boxes)
    batch = Collator(32, "caffe", "torchvision")([ds[4]])
    assert torch.equal(batch.images[0, :, :144, :96], img) and (batch.images[0, :, 144:] == 0).all()


def test_dataset_size_mismatch_is_a_failure(voc_folder):
    recs = _records(voc_folder)
    recs[1]["width"] = 41
    out = DetectionDataset(recs, default_scale=96, max_size=160)[1]
    assert isinstance(out, LoadFailure) and "image is 40x60 but its annotation says 41x60" in out.message


# --- loaders ---------------------------------------------------------------------------------------------------


def test_train_loader_batches(voc_folder):
    cfg = _cfg()
    loader = build_train_loader(cfg, _records(voc_folder), CLASSES)
    assert len(loader) == 3  # landscape a, c, a', c' -> 2 batches; portrait b, b' -> 1
    loader.batch_sampler.set_epoch(1)
    batches = list(loader)
    assert len(batches) == 3
    seen = []
    for batch in batches:
        assert isinstance(batch, Batch) and batch.images.shape[0] == len(batch.targets) == len(batch.metas)
        assert batch.images.shape[2] % 32 == 0 and batch.images.shape[3] % 32 == 0
        for (h, w), meta in zip(batch.image_sizes, batch.metas):
            assert min(h, w) == 96
            seen.append((meta["id"], meta["flipped"]))
    assert sorted(seen) == [(i, f) for i in "abc" for f in (False, True)]


def test_train_loader_without_flip_and_test_loader(voc_folder):
    recs = _records(voc_folder)
    assert len(build_train_loader(_cfg(flip=False), recs, CLASSES).dataset) == 3
    loader = build_test_loader(_cfg(test_scale=48), recs, CLASSES, batch_size=2)
    batches = list(loader)
    ids = [m["id"] for b in batches for m in b.metas]
    assert ids == ["a", "c", "b"] and not any(m["flipped"] for b in batches for m in b.metas)
    assert batches[0].image_sizes == [(48, 64), (48, 60)] and batches[0].images.shape == (2, 3, 64, 64)



def test_filter_empty_drops_training_images_without_objects(voc_folder):
    recs = _records(voc_folder)  # "c" has no objects
    assert len(build_train_loader(_cfg(flip=False, filter_empty=True), recs, CLASSES).dataset) == 2
    assert "crowd_boxes" not in build_train_loader(_cfg(), recs, CLASSES).dataset[0][1]  # VOC: no crowd regions
    with pytest.raises(UserError, match="data.filter_empty: no training image has an object"):
        build_train_loader(_cfg(filter_empty=True), [recs[2]], CLASSES)

def test_bad_config_and_records(voc_folder):
    recs = _records(voc_folder)
    with pytest.raises(UserError, match="data.normalization"):
        build_train_loader(_cfg(normalization="rgb"), recs, CLASSES)
    with pytest.raises(UserError, match="data.train_scales"):
        build_train_loader(_cfg(train_scales=()), recs, CLASSES)
    with pytest.raises(UserError, match="no training images"):
        build_train_loader(_cfg(), [], CLASSES)
    with pytest.raises(UserError, match="label 2 but only 1 classes"):
        build_train_loader(_cfg(), recs, ("cat",))


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_a_one_line_user_error(voc_folder, workers):
    recs = _records(voc_folder)
    bad = voc_folder / "JPEGImages" / "b.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    loader = build_train_loader(_cfg(workers=workers), recs, CLASSES)
    with pytest.raises(UserError) as e:
        for _ in loader:
            pass
    msg = str(e.value)
    assert msg.startswith(f"{bad}: cannot read image") and "\n" not in msg and "Traceback" not in msg


@pytest.fixture
def pinning(monkeypatch, device):
    """Page-locked batches for ``device``: real pinning on CUDA; on a CPU (where torch cannot pin without
    a GPU driver and the DataLoader would switch pinning off) the DataLoader sees an accelerator and
    ``Tensor.pin_memory`` returns a recorded copy, so its pinning thread and ``Batch.pin_memory`` run.
    Yields ``is_pinned(tensor)``, which answers as CUDA does: a tensor without memory (no elements) is never
    pinned, whatever ``pin_memory`` returned (the emulation once let empty targets pass that CUDA reported
    unpinned)."""
    if device.type == "cuda":
        yield lambda t: t.is_pinned()
        return
    pinned = set()

    def pin_memory(t, *args, **kwargs):
        copy = t.clone()
        if copy.untyped_storage().nbytes() > 0:  # CUDA page-locks memory; an empty tensor has none
            pinned.add(copy.data_ptr())
        return copy

    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 0)
    monkeypatch.setattr(torch.accelerator, "set_device_index", lambda index: None)
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    yield lambda t: t.data_ptr() in pinned and t.untyped_storage().nbytes() > 0


def _gt_tensors(gt):
    return [v for v in (gt.boxes, gt.labels, gt.valid, gt.crowd_boxes, gt.crowd_valid) if v is not None]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_staged_batches_and_non_blocking_copies(voc_folder, device, workers):
    """The loader of a CUDA run (pin_memory=True) copies through its reused page-locked buffers (``Staging``)
    rather than pinning every batch anew: ``to(device, non_blocking=True)`` gives the plain loader's values,
    also in a batch with an image without objects ("c"); the pixels travel as uint8 and are normalised on
    ``device``; a CPU copy is a plain one (no buffers); a LoadFailure passes through."""
    recs = _records(voc_folder)
    cfg = _cfg(workers=workers)
    staged = build_train_loader(cfg, recs, CLASSES, pin_memory=True)
    assert staged.staging is not None and not staged.pin_memory
    staged_batches = list(staged)
    plain_batches = list(build_train_loader(cfg, recs, CLASSES))
    assert len(staged_batches) == len(plain_batches) == 3
    assert any(len(t["labels"]) == 0 for b in staged_batches for t in b.targets)  # the case CUDA caught
    for batch, plain in zip(staged_batches, plain_batches):
        assert batch.staging is staged.staging and plain.staging is None
        assert batch.pixels.dtype == torch.uint8 and batch.image_sizes == plain.image_sizes
        moved = batch.to(device, non_blocking=True)
        assert moved.images.device.type == device.type and moved.gt.device.type == device.type
        assert moved.images.dtype == torch.float32 and torch.equal(moved.images.cpu(), plain.images)
        for t, u in zip(_gt_tensors(moved.gt), _gt_tensors(plain.gt)):
            assert torch.equal(t.cpu(), u)
    if device.type == "cpu":
        assert staged.staging.allocations == 0
    else:  # one ring (2 buffers) per (shape, dtype) met
        assert 0 < staged.staging.allocations <= 2 * 4 * len(staged_batches)
    bad = voc_folder / "JPEGImages" / "b.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(UserError, match="b.jpg: cannot read image"):
        list(build_train_loader(cfg, recs, CLASSES, pin_memory=True))


def test_batch_pin_memory_pins_what_to_copies(device, pinning):
    """For a DataLoader of the user's own with pin_memory=True: ``Batch.pin_memory`` page-locks the pixels and
    every padded target tensor, also with an image without objects."""
    a = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    ta = {"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0]]), "labels": torch.tensor([1])}
    tb = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    batch = Collator(32, "imagenet")([(a, ta, {}), (a, tb, {})])
    pinned = batch.pin_memory()
    assert pinning(pinned.pixels) and all(pinning(v) for v in _gt_tensors(pinned.gt))
    assert pinned.normalization == "imagenet" and torch.equal(pinned.images, batch.images)


def test_test_max_size_limits_test_inputs_only(voc_folder):
    from fpn.config import Config

    cfg = Config()
    cfg.data.workers, cfg.data.train_scales, cfg.data.test_scale, cfg.data.max_size = 0, (40,), 40, 50
    recs = _records(voc_folder)
    classes = ("cat", "dog")
    assert cfg.data.test_size_limit() == 50  # 0: the training limit
    train_batch = next(iter(build_test_loader(cfg, recs[:1], classes)))
    cfg.data.test_max_size = 90
    test_batch = next(iter(build_test_loader(cfg, recs[:1], classes)))
    assert max(train_batch.image_sizes[0]) == 50 and max(test_batch.image_sizes[0]) > 50
    cfg.data.test_max_size = -1
    with pytest.raises(UserError, match="data.test_max_size: expected 0"):
        build_test_loader(cfg, recs[:1], classes)
