"""The dataset a config names, ready to read: the synthetic one generated on first use (a complete one is used
as it is), the dataset resolved to its folders (its layout said once), the records of its splits. Everything
here fails early, with a one-line UserError, before a run writes anything."""

from __future__ import annotations

from pathlib import Path
from typing import Collection

from fpn.config import Config
from fpn.errors import UserError

SYNTH_KEYS = ("synth_seed", "synth_train", "synth_test")  # DataConfig fields = the generator's parameters


def ensure_synthetic(cfg: Config, log=print, training: bool = False, asked: Collection[str] = ()) -> None:
    """Make sure ``{data_dir}/synthetic`` holds a complete synthetic dataset in the VOC layout.

    Nothing there, or an interrupted generation: it is generated with the config's ``synth_*`` parameters.
    A complete dataset is used as it is, whatever its parameters (``fpn synth --seed 311 --train 24`` made it:
    it is the user's). Only when ``training`` and ``asked`` (the config keys given on the command line) names
    a ``data.synth_*`` value the folder does not have is it regenerated, and the message says what it
    replaces. When training on a dataset with other parameters than the config's, a line says so; the config is
    left as it is, and the run records the folder's own parameters (``DatasetSpec.generator``, in ``run.json`` and
    every checkpoint). A COCO-only dataset gets the VOC layout added (the same images)."""
    from fpn.data import synthetic

    d = cfg.data
    root = Path(d.data_dir) / "synthetic"
    info = synthetic.read_marker(root)
    wanted = {k: getattr(d, k) for k in SYNTH_KEYS}
    if info is None:
        what = "regenerating the interrupted" if (root / synthetic.OWNER_MARKER).exists() else "generating the"
        log(f"{what} synthetic dataset in {root} ({_describe(wanted)}) ...")
        synthetic.generate(root, seed=d.synth_seed, n_train=d.synth_train, n_test=d.synth_test)
        return
    have = {"synth_seed": info.get("seed"), "synth_train": info.get("n_train"), "synth_test": info.get("n_test")}
    formats = tuple(dict.fromkeys(("voc", *synthetic.formats(root))))  # the VOC layout added, others kept
    differ = [k for k in SYNTH_KEYS if wanted[k] != have[k]]
    if training and any(f"data.{k}" in asked for k in differ):
        log(f"regenerating the synthetic dataset in {root} ({_describe(wanted)}, as --set "
            f"{' '.join(f'data.{k}={wanted[k]}' for k in differ if f'data.{k}' in asked)} asks); it held "
            f"{_describe(have)}")  # fmt: skip
        synthetic.generate(root, seed=d.synth_seed, n_train=d.synth_train, n_test=d.synth_test, formats=formats)
        return
    if differ and training:
        log(f"dataset synthetic: training on the complete dataset in {root} as it is: {_describe(have)} (the "
            f"config's: {_describe(wanted)}; --set {' '.join(f'data.{k}={wanted[k]}' for k in differ)} "
            "regenerates it)")  # fmt: skip
    if info.get("version") != synthetic.GENERATOR_VERSION:
        log(f"note: {root} was drawn by synthetic generator version {info.get('version')}, this fpn draws version "
            f"{synthetic.GENERATOR_VERSION}; `fpn synth --out {root}` with its parameters redraws it")  # fmt: skip
    if "voc" not in synthetic.formats(root):
        log(f"adding the VOC layout to the COCO-format synthetic dataset in {root} ({_describe(have)}) ...")
        synthetic.generate(root, seed=have["synth_seed"], n_train=have["synth_train"], n_test=have["synth_test"],
                           formats=formats)  # fmt: skip


def _describe(params: dict) -> str:
    return f"seed {params['synth_seed']}: {params['synth_train']} train + {params['synth_test']} test images"


def resolve(cfg: Config, generate: bool = True, log=print, classes_from: str = "train", training: bool = False,
            asked: Collection[str] = ()):  # fmt: skip
    """The dataset's ``DatasetSpec``; for ``synthetic`` the data is generated first when missing (for
    ``training``, regenerated when ``asked`` names other parameters: ``ensure_synthetic``). A dataset
    folder's layout is logged. ``classes_from``: the split whose COCO categories are the classes."""
    from fpn.data.catalog import resolve_dataset

    d = cfg.data
    if generate and d.dataset == "synthetic" and not (d.train_json or d.test_json):
        ensure_synthetic(cfg, log=log, training=training, asked=asked)
    spec = resolve_dataset(
        d.dataset, d.data_dir, train_json=d.train_json, train_images=d.train_images, test_json=d.test_json,
        test_images=d.test_images, classes_from=classes_from,
    )  # fmt: skip
    if spec.layout:
        log(f"dataset {spec.name}: {spec.layout}")
    return spec


def split_records(spec, which: str) -> list[dict]:
    """Records of the dataset's ``train`` or ``test`` splits; a UserError when it has none."""
    from fpn.data.records import load_records

    sets = spec.train_sets if which == "train" else spec.test_sets
    if not sets:
        raise UserError(f"dataset {spec.name} has no {which} split (give one with --set data.{which}_json=FILE)")
    return load_records(list(sets), spec.classes, category_ids=spec.category_ids or None)


def describe_split(name: str, records: list[dict], classes: tuple[str, ...], use_difficult: bool = False) -> str:
    """One line of a split's counts, said when a run starts: ``train: 6400 images (253 without objects), 21082 objects
    (circle 2650, square 2698, ...); 1661 difficult, 0 crowd regions left out``. Difficult objects are counted as
    left out unless ``use_difficult`` (as the loader trains them)."""
    import numpy as np

    per_class = np.zeros(len(classes) + 1, dtype=np.int64)
    empty = difficult = crowd = 0
    for r in records:
        labels = np.asarray(r["labels"], dtype=np.int64).reshape(-1)
        is_crowd = np.asarray(r.get("crowd", np.zeros(len(labels), bool)), dtype=bool).reshape(-1)
        is_difficult = np.asarray(r["difficult"], dtype=bool).reshape(-1) & ~is_crowd
        trained = ~is_crowd & (~is_difficult if not use_difficult else True)
        per_class += np.bincount(labels[trained], minlength=len(classes) + 1)
        empty += not trained.any()
        crowd += int(is_crowd.sum())
        difficult += 0 if use_difficult else int(is_difficult.sum())
    counts = ", ".join(f"{c} {n}" for c, n in zip(classes, per_class[1:].tolist()))
    return (f"{name}: {len(records)} images ({empty} without objects), {int(per_class.sum())} objects ({counts}); "
            f"{difficult} difficult, {crowd} crowd regions left out")
