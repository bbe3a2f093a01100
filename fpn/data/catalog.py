"""Which folders a dataset name means: a :class:`DatasetSpec` (class names, the splits used for training and for
testing, the VOC year and the AP metric). :func:`resolve_dataset` maps a name to one:

- ``pascal_voc``: VOC2007 trainval / VOC2007 test;
- ``pascal_voc_0712``: VOC2007 + VOC2012 trainval / VOC2007 test;
- ``synthetic``: the folder ``{data_dir}/synthetic`` written by ``fpn synth`` (classes from its classes.txt);
- ``coco``: COCO 2017, ``{data_dir}/coco/annotations/instances_{train,val}2017.json`` with the images in
  ``{data_dir}/coco/{train,val}2017/`` (train2017 / val2017);
- any other value: a path to a dataset folder, VOC, COCO JSON or YOLO txt, its layout detected
  (:mod:`fpn.data.layouts`);
- ``train_json`` / ``test_json`` (``data.train_json`` ...) given: those COCO files; the name only names the run.

The splits' records are read by :mod:`fpn.data.records`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from fpn.data.layouts import COCO_FILE, find_coco_layout, find_yolo_layout
from fpn.data.records import CocoSplit, ImageSet, coco_categories
from fpn.data.voc import VOC_CLASSES
from fpn.data.yolo import YoloSplit
from fpn.errors import UserError

VOC_URLS = {
    "2007": "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/",
    "2012": "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
}
VOC_ARCHIVES = {
    "2007": ("VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar"),
    "2012": ("VOCtrainval_11-May-2012.tar",),
}
COCO_URL = "https://cocodataset.org/#download"


@dataclass
class DatasetSpec:
    """What a dataset name resolved to. ``year`` is the year of the test set ("2007" for 07+12, "custom"
    when a custom folder's name carries none, "coco" for COCO JSON); ``metric`` is the default metric:
    "voc07" (11-point AP), "area" or "coco". ``category_ids`` (COCO JSON only) are the original ids of
    labels 1..C; ``layout`` says what was found in a dataset folder (empty for the named datasets)."""

    name: str
    classes: tuple[str, ...]
    train_sets: list[ImageSet | CocoSplit | YoloSplit] = field(default_factory=list)
    test_sets: list[ImageSet | CocoSplit | YoloSplit] = field(default_factory=list)
    year: str = "2007"
    metric: str = "voc07"
    category_ids: tuple[int, ...] = ()
    layout: str = ""
    generator: dict = field(default_factory=dict)  # a generated dataset's parameters and counts (synthetic: DONE)


# --- resolving a dataset name ------------------------------------------------------------------------------


def voc_root_candidates(data_dir: str | Path, year: str) -> list[Path]:
    """Where a VOC year folder may be: the seed's layout first, then the archives' own layout."""
    d = Path(data_dir)
    return [d / f"VOCdevkit{year}" / f"VOC{year}", d / "VOCdevkit" / f"VOC{year}", d / f"VOC{year}"]


def _is_voc_folder(root: Path) -> bool:
    return (root / "Annotations").is_dir() and (root / "ImageSets" / "Main").is_dir()


def find_voc_root(data_dir: str | Path, year: str) -> Path:
    """The first candidate folder holding VOC{year}; a UserError saying where to get it otherwise."""
    candidates = voc_root_candidates(data_dir, year)
    for root in candidates:
        if _is_voc_folder(root):
            return root
    archives = " and ".join(VOC_ARCHIVES[year])
    raise UserError(
        f"PASCAL VOC{year} not found (tried {', '.join(str(c) for c in candidates)}): download {archives} "
        f"from {VOC_URLS[year]} and extract them in {data_dir} (giving {candidates[1]}), "
        "or point --data-dir at the folder holding VOCdevkit"
    )


def read_classes(path: str | Path) -> tuple[str, ...]:
    """Class names from a classes.txt (one per line, blank lines ignored), background not included."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(
            f"{path}: not found; a VOC-layout dataset folder needs a classes.txt with one class name per line"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read class names ({e})") from None
    classes: list[str] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            continue
        if name.lower() in ("__background__", "background"):
            raise UserError(f"{path}:{n}: do not list the background class; it is implicit (label 0)")
        if any(c.isspace() for c in name):
            raise UserError(f"{path}:{n}: class name '{name}' contains whitespace")
        if name.lower() in seen:
            raise UserError(f"{path}:{n}: class '{name}' is already listed on line {seen[name.lower()]}")
        seen[name.lower()] = n
        classes.append(name)
    if not classes:
        raise UserError(f"{path}: lists no classes")
    return tuple(classes)


def _folder_year(root: Path) -> str | None:
    m = re.fullmatch(r"VOC(\d{4})", root.name)
    return m.group(1) if m else None


def _pick_split(root: Path, names: Sequence[str]) -> str:
    """The first split in ``names`` that exists (e.g. trainval, else train); the first name otherwise,
    so that the error about the missing list file names the preferred split."""
    for s in names:
        if ImageSet(root, s).list_file.is_file():
            return s
    return names[0]


DATASET_NAMES = ("pascal_voc", "pascal_voc_0712", "synthetic", "coco")


def resolve_dataset(
    name: str,
    data_dir: str | Path = "data",
    *,
    train_json: str = "",
    train_images: str = "",
    test_json: str = "",
    test_images: str = "",
    classes_from: str = "train",
) -> DatasetSpec:
    """Map a dataset name (or a folder path) to its spec; a UserError when the data is not there.

    ``train_json`` ... are ``data.train_json`` ...: explicit COCO files (images default to the JSON's
    folder). A COCO dataset's classes are read from the categories of its ``classes_from`` split ("train"
    or "test"; the other when that one is not defined); the other split must have the same categories.
    """
    data_dir = Path(data_dir)
    if train_json or test_json or train_images or test_images:
        return _explicit_coco(name, train_json, train_images, test_json, test_images, classes_from)
    if name == "pascal_voc":
        r07 = find_voc_root(data_dir, "2007")
        return DatasetSpec(name, VOC_CLASSES, [ImageSet(r07, "trainval")], [ImageSet(r07, "test")], "2007", "voc07")
    if name == "pascal_voc_0712":
        r07, r12 = find_voc_root(data_dir, "2007"), find_voc_root(data_dir, "2012")
        train = [ImageSet(r07, "trainval"), ImageSet(r12, "trainval")]
        return DatasetSpec(name, VOC_CLASSES, train, [ImageSet(r07, "test")], "2007", "voc07")
    if name == "synthetic":
        from fpn.data.synthetic import read_marker

        root = data_dir / "synthetic"
        marker = read_marker(root)
        if marker is None:
            state = "is incomplete (an interrupted run?)" if root.exists() else "does not exist"
            raise UserError(f"{root}: the synthetic dataset {state}; write it with `fpn synth --out {root}`")
        classes = read_classes(root / "classes.txt")
        return DatasetSpec(name, classes, [ImageSet(root, "trainval")], [ImageSet(root, "test")], "synthetic", "voc07",
                           generator=marker)
    if name == "coco":
        return _coco2017(data_dir, classes_from)
    return _folder_dataset(name, classes_from)


def _folder_dataset(name: str, classes_from: str) -> DatasetSpec:
    """A dataset folder: VOC when it has VOC's folders; else YOLO txt when it has a YOLO layout; else COCO JSON
    when it has no classes.txt and a COCO layout; else VOC (whose errors say what is missing)."""
    root = Path(name)
    if not root.is_dir():
        raise UserError(
            f"unknown dataset '{name}': use {', '.join(DATASET_NAMES)}, or the path of a dataset folder "
            "(VOC: JPEGImages/, Annotations/, ImageSets/Main/<split>.txt, classes.txt; or COCO JSON: "
            "annotations/instances_<split>.json beside image folders, or train/, valid/, test/ folders each "
            "with one .json and its images; or YOLO txt: data.yaml with images/<split>/ and labels/<split>/, or "
            "<split>/images/ and <split>/labels/)"
        )
    if not _is_voc_folder(root):
        found_yolo = find_yolo_layout(root)
        if found_yolo is not None:
            layout, classes, train, test = found_yolo
            return DatasetSpec(str(root), classes, train, test, "custom", "voc07", layout=layout)
    if not ((root / "classes.txt").is_file() or _is_voc_folder(root)):
        found = find_coco_layout(root)
        if found is not None:
            layout, train, test = found
            return _coco_spec(str(root), train, test, classes_from, layout)
    return _custom_dataset(root)


def _custom_dataset(root: Path) -> DatasetSpec:
    if not (root / "classes.txt").is_file() and not _is_voc_folder(root):
        raise UserError(
            f"{root}: neither a VOC-layout folder (JPEGImages/, Annotations/, ImageSets/Main/<split>.txt, "
            "classes.txt) nor COCO JSON (annotations/instances_<split>.json beside image folders, or train/, "
            "valid/, test/ folders each with one .json and its images) nor YOLO txt (data.yaml with images/<split>/ "
            "and labels/<split>/, or <split>/images/ and <split>/labels/); COCO files named otherwise: "
            "--set data.train_json=FILE data.test_json=FILE"
        )
    if not (root / "classes.txt").is_file() and _folder_year(root):
        raise UserError(
            f"{root / 'classes.txt'}: not found; a custom dataset folder needs one class name per line "
            "(for PASCAL VOC itself use --dataset pascal_voc or pascal_voc_0712 with --data-dir)"
        )
    classes = read_classes(root / "classes.txt")
    year = _folder_year(root)
    metric = "area" if year is not None and int(year) >= 2010 else "voc07"
    train = ImageSet(root, _pick_split(root, ("trainval", "train")))
    test = ImageSet(root, _pick_split(root, ("test", "val")))
    layout = f"VOC layout (classes.txt; ImageSets/Main/{train.split}.txt for training, {test.split}.txt for testing)"
    return DatasetSpec(str(root), classes, [train], [test], year or "custom", metric, layout=layout)


# --- COCO JSON datasets -------------------------------------------------------------------------------------

def _coco2017(data_dir: Path, classes_from: str) -> DatasetSpec:
    root = data_dir / "coco"
    hint = (
        f"COCO 2017 is published at {COCO_URL}: extract annotations_trainval2017.zip, train2017.zip and "
        f"val2017.zip into {root}, giving {root / 'annotations' / 'instances_train2017.json'}, "
        f"{root / 'train2017'}/*.jpg, {root / 'annotations' / 'instances_val2017.json'}, {root / 'val2017'}/*.jpg"
    )
    if not (root / "annotations").is_dir():
        raise UserError(f"COCO not found ({root / 'annotations'} does not exist); {hint}")
    ann = root / "annotations"
    train = CocoSplit(ann / "instances_train2017.json", root / "train2017", "train2017", hint)
    test = CocoSplit(ann / "instances_val2017.json", root / "val2017", "val2017", hint)
    return _coco_spec("coco", [train], [test], classes_from)


def _explicit_coco(name, train_json, train_images, test_json, test_images, classes_from) -> DatasetSpec:
    if name in DATASET_NAMES:
        raise UserError(
            f"--dataset {name}: names a dataset, but data.train_json / data.test_json define one too; with "
            "explicit COCO files --dataset only names the run (e.g. --dataset mydata)"
        )
    splits = []
    for role, json_path, images in (("train", train_json, train_images), ("test", test_json, test_images)):
        if images and not json_path:
            raise UserError(f"data.{role}_images is set but data.{role}_json is not")
        if json_path:
            path = Path(json_path)
            m = COCO_FILE.fullmatch(path.stem)
            split = m.group(1) if m else role
            splits.append([CocoSplit(path, Path(images) if images else path.parent, split)])
        else:
            splits.append([])
    layout = "COCO JSON given by data.train_json / data.test_json"
    return _coco_spec(name, splits[0], splits[1], classes_from, layout)


def _coco_spec(name, train, test, classes_from: str, layout: str = "") -> DatasetSpec:
    if classes_from not in ("train", "test"):
        raise ValueError(f"classes_from must be 'train' or 'test', got {classes_from!r}")
    preferred, other = (train, test) if classes_from == "train" else (test, train)
    ids, names = coco_categories((preferred or other)[0])
    return DatasetSpec(name, names, train, test, "coco", "coco", ids, layout)


