"""Training and test data loaders yielding padded :class:`Batch` es.

Pieces, each replaceable:

- :class:`DetectionDataset`: item ``(index, scale)`` -> one transformed image with its target and meta.
  In training with flip, indices ``n..2n-1`` are the mirrors of images ``0..n-1`` (the seed's doubled set).
- :class:`GroupedBatchSampler`: batches of images of one orientation (landscape or portrait) so padding
  stays small; order and per-image scales are a pure function of (seed, epoch); DDP ranks get disjoint
  batches, the same number each; in training all full (``full_batches``).
- :class:`Collator`: zero-pads a list of images into one tensor of 0..255 pixels (bottom/right, to a
  ``transforms.PadRule`` size: a multiple of ``size_divisible`` or a bucket, ``data.pad_bucket``) and the
  targets into a ``GroundTruth`` (a fixed number of slots, ``data.max_objects``).
- :class:`Batch`: ``to(device)`` copies the pixels (uint8 in training) and the ground truth, through the
  loader's reused page-locked buffers on a GPU (``fpn.structures.Staging``), and normalises on the device.
- :class:`DetectionLoader`: a ``DataLoader`` that turns an unreadable image, also one met in a worker
  process, into a one-line ``UserError`` naming the file (instead of the worker's traceback text).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fpn.config import Config
from fpn.structures import GroundTruth, Staging, pad_targets
from fpn.data.transforms import (
    PadRule, batch_images, is_normalized, normalize, normalize_batch, pick_scales, read_image, transform_image,
)
from fpn.errors import UserError


@dataclass
class Batch:
    """What the model consumes. ``pixels`` (N, 3, H, W) zero-padded at the bottom/right: 0..255 values (uint8 in
    training, float32 at test time) to normalise by ``normalization``, or (``normalization`` None) already the
    network input; ``images``: the float32 network input (normalised on the pixels' device,
    ``transforms.normalize_batch``: ``to(device)`` sends the pixels and normalises there);
    ``image_sizes`` (h, w) of each image before padding; ``targets`` {"boxes" float32 (K, 4) continuous
    xyxy in input pixels, "labels" int64 (K,)[, "crowd_boxes" (M, 4)]}, per image, always on the host;
    ``metas`` {"id", "image" (path), "orig_size" (h, w), "scale" (the resize factor: input size = original *
    scale, rounded or floored per axis), "flipped"}; ``gt`` the targets padded into a few tensors
    (``fpn.structures.GroundTruth``: what training feeds the model, one copy per field to the device);
    ``staging``: the loader's reused page-locked buffers for ``to`` (``fpn.structures.Staging``), or None."""

    pixels: torch.Tensor
    image_sizes: list[tuple[int, int]]
    targets: list[dict[str, torch.Tensor]]
    metas: list[dict]
    gt: GroundTruth | None = None  # None: padded from ``targets`` when needed
    normalization: str | None = None
    staging: Staging | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.image_sizes)

    @property
    def images(self) -> torch.Tensor:
        """The float32 network input (N, 3, H, W), where the pixels are."""
        if self.normalization is None:
            return self.pixels
        return normalize_batch(self.pixels, self.image_sizes, self.normalization)

    def padded_targets(self) -> GroundTruth:
        return self.gt if self.gt is not None else pad_targets(self.targets, "cpu")

    def inputs(self, device: torch.device | str, non_blocking: bool = False) -> torch.Tensor:
        """The network input on ``device``: the pixels copied (through ``staging`` when set), then normalised."""
        move = self._mover(device, non_blocking)
        pixels = move(self.pixels)
        if self.normalization is None:
            return pixels
        return normalize_batch(pixels, self.image_sizes, self.normalization, to_device=lambda t, _: move(t))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """The network input and the padded targets on ``device``; ``targets`` stay on the host."""
        images = self.inputs(device, non_blocking)
        gt = self.padded_targets()._map(self._mover(device, non_blocking))
        return Batch(images, self.image_sizes, self.targets, self.metas, gt)

    def _mover(self, device, non_blocking: bool):
        if self.staging is not None:
            return lambda t: self.staging.to_device(t, device)
        return lambda t: t.to(device, non_blocking=non_blocking)

    def pin_memory(self) -> "Batch":
        """Called by ``DataLoader(pin_memory=True)`` in its pinning thread: page-locks what ``to`` copies."""
        gt = self.padded_targets().pin_memory()
        return Batch(self.pixels.pin_memory(), self.image_sizes, self.targets, self.metas, gt, self.normalization)


@dataclass
class LoadFailure:
    """Returned instead of a sample (and a batch) when an image cannot be used; the loader raises it
    as a UserError in the main process. A plain message travels between processes without a traceback."""

    message: str


class DetectionDataset(Dataset):
    """Records -> resized inputs. An item key is ``(index, scale)`` (what :class:`GroupedBatchSampler`
    yields) or a bare index (scale ``default_scale``). Returns ``(image, target, meta)`` with the image
    still 0..255 RGB (3, h, w) (``resize="fast"``: uint8, or float32 with ``float_resize`` (test time: resized
    in float, ``transforms.resize_image``); normalised after the copy to the device, ``Batch.to``)
    or already normalised float32 (``resize="torchvision"``; see :func:`fpn.data.transforms.transform_image`),
    or a :class:`LoadFailure` when the image is unreadable or not the size its annotation states.

    Difficult objects are dropped unless ``use_difficult``; images left without objects are kept (K=0).
    Crowd regions (COCO ``iscrowd=1``) are never objects: an image with any gets ``target["crowd_boxes"]``
    (M, 4), transformed like the boxes, for the matchers to ignore (see ``fpn.model.targets``).
    """

    def __init__(
        self,
        records: Sequence[dict],
        *,
        default_scale: int,
        max_size: int,
        flip: bool = False,
        use_difficult: bool = False,
        resize: str = "fast",
        normalization: str = "imagenet",
        float_resize: bool = False,
    ) -> None:
        self.records = list(records)
        self.float_resize = float_resize
        self.default_scale = default_scale
        self.max_size = max_size
        self.flip = flip
        self.resize, self.normalization = resize, normalization
        # numpy (not torch) arrays: cheap to share with workers, converted per item
        self._boxes, self._labels, self._crowd = [], [], []
        for r in self.records:
            objects, crowd = training_objects(r, use_difficult)
            boxes = np.asarray(r["boxes"], dtype=np.float32).reshape(-1, 4)
            self._boxes.append(boxes[objects])
            self._labels.append(np.asarray(r["labels"], dtype=np.int64)[objects])
            self._crowd.append(boxes[crowd] if crowd.any() else None)

    def __len__(self) -> int:
        return len(self.records) * (2 if self.flip else 1)

    def group_ids(self) -> np.ndarray:
        """0 for landscape (w >= h), 1 for portrait, per item (mirrors included)."""
        g = np.array([int(r["width"] < r["height"]) for r in self.records], dtype=np.int64)
        return np.tile(g, 2) if self.flip else g

    def __getitem__(self, key):
        index, scale = key if isinstance(key, tuple) else (key, self.default_scale)
        n = len(self.records)
        if not 0 <= index < len(self):
            raise IndexError(index)
        rec, flipped = self.records[index % n], index >= n
        try:
            image = read_image(rec["image"])
        except UserError as e:
            return LoadFailure(str(e))
        h, w = image.shape[-2:]
        if (h, w) != (rec["height"], rec["width"]):
            return LoadFailure(
                f"{rec['image']}: image is {w}x{h} but its annotation says {rec['width']}x{rec['height']}"
            )
        boxes, crowd = torch.from_numpy(self._boxes[index % n]), self._crowd[index % n]
        k = len(boxes)
        if crowd is not None:  # (K + M, 4): transformed together, split after
            boxes = torch.cat((boxes, torch.from_numpy(crowd)))
        image, boxes, factor = transform_image(
            image, boxes, scale, self.max_size, self.normalization, flip=flipped, resize=self.resize,
            float_resize=self.float_resize,
        )  # fmt: skip
        target = {"boxes": boxes[:k], "labels": torch.from_numpy(self._labels[index % n]).clone()}  # not a view of ours
        if crowd is not None:
            target["crowd_boxes"] = boxes[k:]
        meta = {"id": rec["id"], "image": rec["image"], "orig_size": (int(h), int(w)), "scale": factor,
                "flipped": flipped}  # fmt: skip
        return image, target, meta


def training_objects(record: dict, use_difficult: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(objects, crowd) bool (K,) masks over a record's boxes: the objects trained on (not crowd, not
    difficult unless ``use_difficult``) and the crowd regions (``record["crowd"]``, COCO only)."""
    k = len(np.asarray(record["labels"]).reshape(-1))
    crowd = np.asarray(record.get("crowd", np.zeros(k, dtype=bool)), dtype=bool).reshape(-1)
    objects = ~crowd if use_difficult else ~crowd & ~np.asarray(record["difficult"], dtype=bool).reshape(-1)
    return objects, crowd


class Collator:
    """List of dataset samples -> :class:`Batch`: the images copied into one zero-padded tensor by
    :func:`fpn.data.transforms.batch_images` (0..255 pixels, uint8 when the dataset gives uint8, normalised later
    by ``Batch.to`` on the device; or already normalised, ``transforms.is_normalized``), padded to ``pad``'s size
    (default: a multiple of ``size_divisible``); the targets padded (``Batch.gt``, here in the worker rather than
    in the training step) to ``max_objects`` slots (0: the batch's most) and crowd regions to ``max_crowd``. In a
    worker process the tensor is allocated in shared memory (as torch's default collate does), saving a copy.
    Passes a :class:`LoadFailure` on."""

    def __init__(self, size_divisible: int = 32, normalization: str = "imagenet", resize: str = "fast",
                 pad: PadRule | None = None, max_objects: int = 0, max_crowd: int = 0) -> None:  # fmt: skip
        normalize(torch.zeros(3, 1, 1, dtype=torch.uint8), normalization)  # a bad name fails here, not in a worker
        self.pad = pad if pad is not None else PadRule(size_divisible)
        self.normalization = None if is_normalized(resize) else normalization
        self.max_objects, self.max_crowd = max_objects, max_crowd

    def __call__(self, samples: list) -> Batch | LoadFailure:
        for s in samples:
            if isinstance(s, LoadFailure):
                return s
        images = [s[0] for s in samples]
        out, sizes = batch_images(images, None, empty=_empty_batch_tensor, pad=self.pad)
        targets = [s[1] for s in samples]
        gt = pad_targets(targets, "cpu", self.max_objects, self.max_crowd)
        return Batch(out, sizes, targets, [s[2] for s in samples], gt, self.normalization)


def _empty_batch_tensor(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uninitialised tensor; in shared memory inside a DataLoader worker (sent without a copy)."""
    if torch.utils.data.get_worker_info() is not None:
        try:
            storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape), device="cpu")
            return torch.empty(0, dtype=dtype).new(storage).resize_(shape)
        except (AttributeError, RuntimeError):  # private API of torch's default collate; fall back
            pass
    return torch.empty(shape, dtype=dtype)


class GroupedBatchSampler(Sampler):
    """Batches of item keys ``(index, scale)``, every batch from one group (e.g. orientation).

    One epoch: each group's indices, in a shuffled order, are cut into batches of ``batch_size``; the batches
    are then shuffled. A group's last batch may be short: kept as it is without ``full_batches`` (the test loader:
    every image once); with ``full_batches`` (training) an epoch is ``items // batch_size`` batches, all full, as
    torchvision's GroupedBatchSampler makes them: the short leftovers, largest first, are completed with the
    first items of their own group in this epoch's order, and the leftovers beyond that count are dropped (other
    ones each epoch). So 6400 images in two orientations at batch 4 make 1600 iterations, not 1601, and every
    batch has ``batch_size`` images (one batch shape per padded size). Without ``shuffle``, indices
    stay in order and batches are ordered by their first index. Everything, including the scale drawn
    per item from ``scales``, is a function of (seed, epoch) only, identical on all ranks. With
    ``world_size`` > 1 the epoch's batch list is cut to a multiple of ``world_size`` (the few leftover
    batches, random ones each epoch, are skipped) and rank r takes batches r, r + world_size, ...

    With ``random_mirror`` the second half of the items mirrors the first (a dataset with flip): each epoch
    takes one item of each pair, the mirror with probability 1/2, so every image is seen once per epoch.

    ``set_epoch(epoch, start_iter)`` selects the epoch and skips its first ``start_iter`` batches (resume);
    ``len()`` is always the full epoch's number of batches for one rank.
    """

    def __init__(
        self,
        group_ids: Sequence[int],
        batch_size: int,
        scales: Sequence[int],
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        random_mirror: bool = False,
        full_batches: bool = False,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        self.group_ids = np.asarray(group_ids, dtype=np.int64)
        if random_mirror and len(self.group_ids) % 2:
            raise ValueError(f"random_mirror needs pairs of items, got {len(self.group_ids)} items")
        self.random_mirror = random_mirror
        self.batch_size = int(batch_size)
        self.scales = tuple(int(s) for s in scales)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_iter = 0, 0
        seen = self.group_ids[: len(self.group_ids) // 2] if random_mirror else self.group_ids  # one epoch's items
        groups = np.unique(seen)
        self.full_batches = full_batches
        if full_batches:
            total = len(seen) // self.batch_size
        else:
            total = sum(math.ceil(int((seen == g).sum()) / self.batch_size) for g in groups)
        self._total = total  # all ranks' batches of an epoch, before the cut to a multiple of world_size
        self._num_batches = total // world_size
        if self._num_batches == 0:
            what = "full batches" if full_batches else "batches"
            raise UserError(
                f"{len(seen)} images make {total} {what} of {batch_size}: too few for {world_size} processes"
            )

    def set_epoch(self, epoch: int, start_iter: int = 0) -> None:
        if not 0 <= start_iter <= self._num_batches:
            raise ValueError(f"start_iter {start_iter} is outside 0..{self._num_batches}")
        self.epoch, self.start_iter = int(epoch), int(start_iter)

    def __len__(self) -> int:
        return self._num_batches

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """All of this rank's batches of ``epoch``, start_iter not applied."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.group_ids)
        if self.random_mirror:
            half = n // 2
            items = np.arange(half) + half * (rng.random(half) < 0.5)  # image i or its mirror i + half
        else:
            items = np.arange(n)
        order = items[rng.permutation(len(items))] if self.shuffle else items
        scales = pick_scales(self.scales, n, rng)
        ordered_groups = self.group_ids[order]
        batches, short = [], []
        bs = self.batch_size
        for g in np.unique(self.group_ids):
            idx = order[ordered_groups == g]
            if not self.full_batches:
                batches += [idx[i : i + bs] for i in range(0, len(idx), bs)]
                continue
            cut = len(idx) // bs * bs
            batches += [idx[i : i + bs] for i in range(0, cut, bs)]
            if cut < len(idx):
                short.append(idx)
        # full batches: the leftovers (each under batch_size, so fewer than there are short groups), largest
        # first (stable: group order on ties), completed with their group's first items, cyclically
        short.sort(key=lambda idx: -(len(idx) % bs))
        for idx in short[: self._total - len(batches)]:
            rest = idx[len(idx) // bs * bs :]
            batches.append(np.concatenate((rest, np.resize(idx, bs - len(rest)))))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        else:
            batches.sort(key=lambda b: b[0])
        batches = batches[: self._num_batches * self.world_size][self.rank :: self.world_size]
        return [[(int(i), scales[i]) for i in b] for b in batches]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        yield from self.epoch_batches(self.epoch)[self.start_iter :]


class DetectionLoader(DataLoader):
    """A DataLoader whose iteration raises a one-line UserError for a :class:`LoadFailure` batch.
    ``iter(loader)`` creates the underlying iterator at once, as a plain DataLoader does. ``staging``: reused
    page-locked buffers (``fpn.structures.Staging``, for a CUDA run) that every batch's ``to`` copies through."""

    def __init__(self, *args, staging: Staging | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.staging = staging

    def __iter__(self) -> "_CheckedIterator":
        return _CheckedIterator(super().__iter__(), self.staging)


class _CheckedIterator:
    def __init__(self, it, staging: Staging | None = None) -> None:
        self._it, self._staging = it, staging

    def __iter__(self) -> "_CheckedIterator":
        return self

    def __len__(self) -> int:
        return len(self._it)

    def __next__(self) -> Batch:
        batch = next(self._it)
        if isinstance(batch, LoadFailure):
            raise UserError(batch.message)
        if self._staging is not None:
            batch.staging = self._staging
        return batch


def _check_records(records: Sequence[dict], classes: Sequence[str], what: str) -> None:
    if not records:
        raise UserError(f"no {what} images: the dataset's image set is empty")
    labels = np.concatenate([np.asarray(r["labels"], dtype=np.int64).reshape(-1) for r in records])
    top = int(labels.max()) if labels.size else 0
    if top > len(classes):
        raise UserError(f"{what} records use label {top} but only {len(classes)} classes were given")


def _loader(dataset: Dataset, sampler: Sampler, cfg: Config, persistent: bool, pin_memory: bool,
            collator: Collator) -> DetectionLoader:  # fmt: skip
    """``pin_memory``: the batches are bound for a GPU; they are copied through the loader's reused page-locked
    buffers (``Staging``) when ``to`` is called, rather than page-locked anew in the DataLoader's pinning thread."""
    workers = cfg.data.workers
    return DetectionLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        staging=Staging() if pin_memory else None,
    )


def object_capacity(records: Sequence[dict], max_objects: int, use_difficult: bool = False) -> tuple[int, int]:
    """(object slots, crowd slots) of the training batches' ground truth under ``data.max_objects`` (0: the most
    objects of any record rounded up to a multiple of 8; -1: 0, i.e. each batch's most); crowd slots: the most
    crowd regions of any record, 0 when none has any. A UserError naming the image when one has more objects
    than a fixed ``max_objects``."""
    counts = [(int(o.sum()), int(c.sum())) for o, c in (training_objects(r, use_difficult) for r in records)]
    most = max((k for k, _ in counts), default=0)
    crowd = max((m for _, m in counts), default=0)
    if max_objects < 0:
        return 0, 0
    if max_objects == 0:
        return max(8, -(-most // 8) * 8), crowd
    if most > max_objects:
        i = next(i for i, (k, _) in enumerate(counts) if k > max_objects)
        raise UserError(f"config data.max_objects={max_objects}: {records[i]['image']} has {counts[i][0]} objects; "
                        f"raise it to at least {most}, or 0 (the most of any training image)")  # fmt: skip
    return max_objects, crowd


def build_train_loader(
    cfg: Config, records: Sequence[dict], classes: Sequence[str], rank: int = 0, world_size: int = 1,
    pin_memory: bool = False,
) -> DetectionLoader:
    """Shuffled, aspect-grouped training batches of ``cfg.solver.batch_size`` images per process (each
    image plus its mirror when ``cfg.data.flip``; the image or its mirror with ``cfg.data.flip_random``;
    images without objects left out with ``cfg.data.filter_empty``). Call ``loader.batch_sampler.set_epoch(epoch,
    start_iter)`` before each epoch; ``len(loader)`` is the number of iterations per epoch, every batch full.
    Batches are padded to ``cfg.data.pad_bucket``'s buckets, their ground truth to ``cfg.data.max_objects`` slots
    (:func:`object_capacity`, checked here, before any training). ``pin_memory`` (a CUDA run): the loader owns
    a ``Staging``, reused page-locked buffers, so ``batch.to(cuda, non_blocking=True)`` overlaps the copy without
    page-locking a new batch every step."""
    cfg.data.validate()
    _check_records(records, classes, "training")
    d = cfg.data
    if d.filter_empty:
        records = [r for r in records if training_objects(r, d.use_difficult)[0].any()]
        if not records:
            raise UserError("data.filter_empty: no training image has an object to train on")
    dataset = DetectionDataset(
        records, default_scale=d.train_scales[0], max_size=d.max_size, flip=d.flip,
        use_difficult=d.use_difficult, resize=d.resize, normalization=d.normalization,
    )  # fmt: skip
    sampler = GroupedBatchSampler(
        dataset.group_ids(), cfg.solver.batch_size, d.train_scales, shuffle=True, seed=cfg.seed,
        rank=rank, world_size=world_size, random_mirror=d.flip and d.flip_random, full_batches=True,
    )  # fmt: skip
    pad = PadRule(d.size_divisible, d.pad_bucket, max(d.train_scales), d.max_size)
    objects, crowd = object_capacity(records, d.max_objects, d.use_difficult)
    collator = Collator(d.size_divisible, d.normalization, d.resize, pad, objects, crowd)
    return _loader(dataset, sampler, cfg, persistent=True, pin_memory=pin_memory, collator=collator)


def build_test_loader(
    cfg: Config, records: Sequence[dict], classes: Sequence[str], batch_size: int = 1, pin_memory: bool = False
) -> DetectionLoader:
    """Every image once, unflipped, at ``cfg.data.test_scale`` (resized in float32, as in the Python API and an
    exported graph); batches group images of one orientation,
    so the order is not the records' order (use ``batch.metas[i]["id"]``). Targets follow
    ``cfg.data.use_difficult`` like training (evaluation reads the records, not these targets)."""
    cfg.data.validate()
    _check_records(records, classes, "test")
    d = cfg.data
    dataset = DetectionDataset(
        records, default_scale=d.test_scale, max_size=d.test_size_limit(), flip=False,
        use_difficult=d.use_difficult, resize=d.resize, normalization=d.normalization, float_resize=True,
    )  # fmt: skip
    sampler = GroupedBatchSampler(dataset.group_ids(), batch_size, (d.test_scale,), shuffle=False)
    pad = PadRule(d.size_divisible, d.test_pad_bucket, d.test_scale, d.test_size_limit())
    collator = Collator(d.size_divisible, d.normalization, d.resize, pad)
    return _loader(dataset, sampler, cfg, persistent=False, pin_memory=pin_memory, collator=collator)
