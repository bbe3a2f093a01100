"""Which folders a dataset name means, and reading their annotations into records (cached).

A dataset is a :class:`DatasetSpec`: class names, the image sets (devkit year folder + split) used for
training and for testing, the VOC year and the AP metric. :func:`resolve_dataset` maps a name to one:

- ``pascal_voc``: VOC2007 trainval / VOC2007 test;
- ``pascal_voc_0712``: VOC2007 + VOC2012 trainval / VOC2007 test;
- ``synthetic``: the folder ``{data_dir}/synthetic`` written by ``fpn synth`` (classes from its classes.txt);
- ``coco``: COCO 2017, ``{data_dir}/coco/annotations/instances_{train,val}2017.json`` with the images in
  ``{data_dir}/coco/{train,val}2017/`` (train2017 / val2017);
- any other value: a path to a dataset folder, VOC or COCO JSON, its layout detected (:func:`find_coco_layout`);
- ``train_json`` / ``test_json`` (``data.train_json`` ...) given: those COCO files; the name only names the run.

A split is an :class:`ImageSet` (VOC list file) or a :class:`CocoSplit` (COCO JSON + image folder).
:func:`load_records` reads splits into records (see :mod:`fpn.data.voc` and :mod:`fpn.data.coco`). Parsing
16k XML files or a COCO train2017 file takes seconds, so the records are pickled in a cache file that is
used only while a cheap signature (VOC: the split file's bytes, each XML file's mtime and size; COCO: the
JSON file's mtime and size) still matches.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from fpn.data.coco import CocoAnnotations, parse_coco, read_coco_json
from fpn.data.voc import VOC_CLASSES, parse_voc_xml
from fpn.errors import DataWarning, UserError
from fpn.io import atomic_open

VOC_URLS = {
    "2007": "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/",
    "2012": "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
}
VOC_ARCHIVES = {
    "2007": ("VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar"),
    "2012": ("VOCtrainval_11-May-2012.tar",),
}
CACHE_VERSION = 1  # bump when the record format or the parser changes: old cache files are then ignored
COCO_CACHE_VERSION = 1  # the same for COCO files (fpn.data.coco)
CACHE_SUBDIR = "annotations_cache"
COCO_URL = "https://cocodataset.org/#download"


@dataclass(frozen=True)
class ImageSet:
    """One split of one VOC-layout folder: ``{root}/ImageSets/Main/{split}.txt``."""

    root: Path
    split: str

    @property
    def list_file(self) -> Path:
        return Path(self.root) / "ImageSets" / "Main" / f"{self.split}.txt"


@dataclass(frozen=True)
class CocoSplit:
    """One split of a COCO-JSON dataset: its annotation file and image folder. ``split`` names it in
    output folders (e.g. val2017); ``hint`` is added to the error when the file is missing."""

    json: Path
    images: Path
    split: str
    hint: str = ""


@dataclass
class DatasetSpec:
    """What a dataset name resolved to. ``year`` is the year of the test set ("2007" for 07+12, "custom"
    when a custom folder's name carries none, "coco" for COCO JSON); ``metric`` is the default metric:
    "voc07" (11-point AP), "area" or "coco". ``category_ids`` (COCO JSON only) are the original ids of
    labels 1..C; ``layout`` says what was found in a dataset folder (empty for the named datasets)."""

    name: str
    classes: tuple[str, ...]
    train_sets: list[ImageSet | CocoSplit] = field(default_factory=list)
    test_sets: list[ImageSet | CocoSplit] = field(default_factory=list)
    year: str = "2007"
    metric: str = "voc07"
    category_ids: tuple[int, ...] = ()
    layout: str = ""


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
        from fpn.data.synthetic import is_complete

        root = data_dir / "synthetic"
        if not is_complete(root):
            state = "is incomplete (an interrupted run?)" if root.exists() else "does not exist"
            raise UserError(f"{root}: the synthetic dataset {state}; write it with `fpn synth --out {root}`")
        classes = read_classes(root / "classes.txt")
        return DatasetSpec(name, classes, [ImageSet(root, "trainval")], [ImageSet(root, "test")], "synthetic", "voc07")
    if name == "coco":
        return _coco2017(data_dir, classes_from)
    return _folder_dataset(name, classes_from)


def _folder_dataset(name: str, classes_from: str) -> DatasetSpec:
    """A dataset folder: COCO JSON when it has no VOC files and a COCO layout, else VOC."""
    root = Path(name)
    if not root.is_dir():
        raise UserError(
            f"unknown dataset '{name}': use {', '.join(DATASET_NAMES)}, or the path of a dataset folder "
            "(VOC: JPEGImages/, Annotations/, ImageSets/Main/<split>.txt, classes.txt; or COCO JSON: "
            "annotations/instances_<split>.json beside image folders, or train/, valid/, test/ folders each "
            "with one .json and its images)"
        )
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
            "valid/, test/ folders each with one .json and its images); COCO files named otherwise: "
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

# stems of the annotation files of layout A: instances_<split>.json or <split>.json, split train*/val*/test*
_COCO_FILE = re.compile(r"(?:instances_)?((train|val|test)\w*)", re.IGNORECASE)
_ROLES = {"train": "train", "val": "test", "test": "test"}


def find_coco_layout(root: Path) -> tuple[str, list[CocoSplit], list[CocoSplit]] | None:
    """COCO JSON in ``root``: (what was found, train splits, test splits), or None when it has neither
    layout. Layout A: ``annotations/instances_<S>.json`` (or ``<S>.json``; S starting with train, val or
    test; test files win over val files) with the images in ``<S>/``, ``images/<S>/``, ``images/`` or
    ``JPEGImages/``. Layout B: ``train/``, ``valid/`` or ``val/``, ``test/`` folders each holding one
    ``.json`` and its images (test wins over valid over val). Several candidates for one role: a UserError."""
    found = _layout_annotations_folder(root)
    if found is None:
        found = _layout_split_folders(root)
    if found is None:
        return None
    layout, train, test = found
    used = ", ".join(
        f"{role} {s.json.relative_to(root)} (images {s.images.relative_to(root) if s.images != root else '.'}/)"
        for role, s in (("train", train), ("test", test)) if s is not None
    )  # fmt: skip
    return f"COCO JSON, layout {layout}: {used}", [train] if train else [], [test] if test else []


def _layout_annotations_folder(root: Path):
    ann = root / "annotations"
    if not ann.is_dir():
        return None
    by_role: dict[str, dict[str, list[Path]]] = {"train": {}, "test": {}}
    for path in sorted(ann.glob("*.json")):
        m = _COCO_FILE.fullmatch(path.stem)
        if m:
            kind = m.group(2).lower()
            by_role[_ROLES[kind]].setdefault(kind, []).append(path)
    train = by_role["train"].get("train", [])
    test = by_role["test"].get("test") or by_role["test"].get("val", [])
    if not (train or test):
        return None
    splits = []
    for role, paths in (("train", train), ("test", test)):
        if len(paths) > 1:
            raise UserError(
                f"{ann}: several {role} annotation files ({', '.join(p.name for p in paths)}); choose one with "
                f"--set data.{role}_json=FILE data.{role}_images=FOLDER"
            )
        splits.append(_images_beside(root, paths[0], role) if paths else None)
    return "annotations/instances_<split>.json", splits[0], splits[1]


def _images_beside(root: Path, json_path: Path, role: str) -> CocoSplit:
    split = _COCO_FILE.fullmatch(json_path.stem).group(1)
    candidates = [root / split, root / "images" / split, root / "images", root / "JPEGImages"]
    for folder in candidates:
        if folder.is_dir():
            return CocoSplit(json_path, folder, split)
    raise UserError(
        f"{json_path}: no image folder for it (tried {', '.join(str(c) for c in candidates)}); "
        f"or give it with --set data.{role}_json={json_path} data.{role}_images=FOLDER"
    )


def _layout_split_folders(root: Path):
    splits: dict[str, CocoSplit] = {}
    for name in ("train", "valid", "val", "test"):
        folder = root / name
        if not folder.is_dir():
            continue
        files = sorted(folder.glob("*.json"))
        if len(files) > 1:
            raise UserError(
                f"{folder}: holds several .json files ({', '.join(f.name for f in files)}); keep one, or choose "
                "with --set data.train_json=... data.test_json=..."
            )
        if files:
            splits[name] = CocoSplit(files[0], folder, name)
    train = splits.get("train")
    test = splits.get("test") or splits.get("valid") or splits.get("val")
    if not (train or test):
        return None
    return "train/, valid/ (or val/), test/ folders", train, test


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
            m = _COCO_FILE.fullmatch(path.stem)
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


# --- reading records ---------------------------------------------------------------------------------------


def load_records(
    image_sets: Sequence[ImageSet | CocoSplit],
    classes: Sequence[str],
    cache_dir: str | Path | None = None,
    category_ids: Sequence[int] | None = None,
) -> list[dict]:
    """All records of the splits, in list-file (VOC) or file (COCO) order (see :mod:`fpn.data.voc`,
    :mod:`fpn.data.coco` for the formats).

    Labels are 1-based indices into ``classes``; a COCO file must have exactly these categories (and, when
    given, these ``category_ids``). Each split's records are cached in ``cache_dir`` (default
    ``annotations_cache`` beside the list file's folder or the JSON, else the user cache folder when that is
    not writable); a cache file is used only while its signature (module docstring) still matches.
    Raises UserError for a missing or empty list file, a missing annotation file or image, or a bad
    annotation; bad COCO boxes are dropped or clipped with one ``DataWarning`` per file.
    """
    classes = tuple(classes)
    records: list[dict] = []
    for image_set in image_sets:
        if isinstance(image_set, CocoSplit):
            records += _load_coco_split(image_set, classes, category_ids, cache_dir)
        else:
            records += _load_image_set(ImageSet(Path(image_set.root), image_set.split), classes, cache_dir)
    return records


def read_image_list(path: Path, split: str) -> tuple[list[str], bytes]:
    """Image ids of an ``ImageSets/Main/<split>.txt`` list (one per line, blank lines skipped) and the
    file's bytes; a missing or empty file, a line with several fields or an id listed twice is a one-line
    UserError naming the file (and line)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: image set '{split}' not found (is its archive extracted here?)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read image set ({e.strerror})") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file of image ids") from None
    ids: list[str] = []
    line_of: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 1:
            raise UserError(f"{path}:{n}: expected one image id per line, got '{line.strip()}'")
        image_id = parts[0]
        if image_id in line_of:
            raise UserError(f"{path}:{n}: image '{image_id}' is already listed on line {line_of[image_id]}")
        line_of[image_id] = n
        ids.append(image_id)
    if not ids:
        raise UserError(f"{path}: image set is empty")
    return ids, raw


def _line_number(path: Path, image_id: str) -> int:
    """Line of ``image_id`` in a list file (only computed for error messages)."""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.split()[:1] == [image_id]:
            return n
    return 0


def _signature(image_set: ImageSet, ids: list[str], raw_list: bytes, classes: tuple[str, ...]) -> str:
    """Hash of what the records depend on: list file bytes, classes, each XML's (mtime_ns, size)."""
    ann = Path(image_set.root) / "Annotations"
    stats = np.empty((len(ids), 2), dtype=np.int64)
    for i, image_id in enumerate(ids):
        try:
            st = os.stat(ann / f"{image_id}.xml")
        except FileNotFoundError:
            n = _line_number(image_set.list_file, image_id)
            raise UserError(
                f"{image_set.list_file}:{n}: image '{image_id}' has no annotation file {ann / f'{image_id}.xml'}"
            ) from None
        stats[i] = (st.st_mtime_ns, st.st_size)
    h = hashlib.sha1()
    h.update(f"v{CACHE_VERSION}\0".encode())
    h.update("\n".join(classes).encode() + b"\0")
    h.update(raw_list + b"\0")
    h.update(stats.tobytes())
    return h.hexdigest()


def _check_images(image_set: ImageSet, ids: list[str]) -> None:
    """Every listed id has its JPEGImages/<id>.jpg (one directory listing, not one stat per image)."""
    folder = Path(image_set.root) / "JPEGImages"
    try:
        present = set(os.listdir(folder))
    except FileNotFoundError:
        raise UserError(f"{folder}: image folder not found (needed by {image_set.list_file})") from None
    except OSError as e:
        raise UserError(f"{folder}: cannot list images ({e.strerror})") from None
    for image_id in ids:
        if f"{image_id}.jpg" not in present:
            n = _line_number(image_set.list_file, image_id)
            image = folder / f"{image_id}.jpg"
            raise UserError(f"{image_set.list_file}:{n}: image '{image_id}' is listed but {image} does not exist")


def _cache_dirs(root: Path, cache_dir: str | Path | None) -> list[Path]:
    """Where a cache file of the data in ``root`` goes: ``cache_dir``, else ``root``'s cache folder, else
    the user's."""
    if cache_dir is not None:
        return [Path(cache_dir)]
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fpn" / CACHE_SUBDIR
    return [Path(root) / CACHE_SUBDIR, user]


def cache_file_name(image_set: ImageSet, classes: tuple[str, ...]) -> str:
    """The cache file's name: readable prefix + a hash of the folder's absolute path, split and classes."""
    root = Path(image_set.root)
    key = hashlib.sha1(f"{root.resolve()}\0{image_set.split}\0{chr(10).join(classes)}".encode()).hexdigest()[:12]
    return f"{root.name}_{image_set.split}_{key}.pkl"


def _read_cache(files: list[Path], signature: str) -> list[dict] | None:
    for f in files:
        try:
            with open(f, "rb") as fh:
                data = pickle.load(fh)
        except FileNotFoundError:
            continue
        except Exception:  # a truncated or foreign cache file: ignore it, it gets rewritten
            continue
        if isinstance(data, dict) and data.get("signature") == signature:
            return data["records"]
    return None


def _write_cache(files: list[Path], signature: str, records: list[dict]) -> None:
    _write_pickles(files, [{"signature": signature, "records": records}])


def _write_pickles(files: list[Path], objects: list) -> None:
    """Pickle ``objects`` one after the other into the first writable of ``files`` (atomically); a warning
    when none is."""
    errors = []
    for f in files:
        try:
            with atomic_open(f, "wb") as fh:
                for obj in objects:
                    pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
            return
        except OSError as e:
            errors.append(f"{f.parent} ({e.strerror})")
    warnings.warn(f"annotation cache not written, not writable: {', '.join(errors)}", stacklevel=4)


def _load_image_set(image_set: ImageSet, classes: tuple[str, ...], cache_dir: str | Path | None) -> list[dict]:
    root = Path(image_set.root)
    ids, raw_list = read_image_list(image_set.list_file, image_set.split)
    signature = _signature(image_set, ids, raw_list, classes)
    _check_images(image_set, ids)
    name = cache_file_name(image_set, classes)
    files = [d / name for d in _cache_dirs(root, cache_dir)]
    records = _read_cache(files, signature)
    if records is None:
        class_to_label = {c.lower(): i + 1 for i, c in enumerate(classes)}
        ann = root / "Annotations"
        records = [parse_voc_xml(ann / f"{i}.xml", class_to_label, "") for i in ids]
        _write_cache(files, signature, records)
    # image paths are set here, not cached, so they follow the root as the caller spelled it
    jpeg = root / "JPEGImages"
    for rec, image_id in zip(records, ids):
        rec["image"] = str(jpeg / f"{image_id}.jpg")
    return records


# --- COCO splits --------------------------------------------------------------------------------------------


def _coco_cache_files(split: CocoSplit, cache_dir: str | Path | None) -> list[Path]:
    path = Path(split.json)
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    return [d / f"{path.stem}_{key}.pkl" for d in _cache_dirs(path.parent, cache_dir)]


def _coco_signature(split: CocoSplit) -> str:
    path = Path(split.json)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        hint = f"; {split.hint}" if split.hint else ""
        raise UserError(f"{path}: COCO annotation file not found{hint}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    return f"coco v{COCO_CACHE_VERSION}\0{path.resolve()}\0{st.st_mtime_ns}\0{st.st_size}"


def _read_coco_cache(files: list[Path], signature: str, header_only: bool):
    """(header, CocoAnnotations or None) from the first cache file whose header has ``signature``. A cache
    file is two pickles: the header ({"signature", "category_ids", "category_names"}), then the annotations,
    so the categories are read without loading the rest."""
    for f in files:
        try:
            with open(f, "rb") as fh:
                header = pickle.load(fh)
                if not (isinstance(header, dict) and header.get("signature") == signature):
                    continue
                if header_only:
                    return header, None
                coco = pickle.load(fh)
        except Exception:  # missing, truncated or foreign: ignored (and rewritten)
            continue
        if isinstance(coco, CocoAnnotations):
            return header, coco
    return None, None


def _parse_and_cache(split: CocoSplit, files: list[Path], signature: str) -> CocoAnnotations:
    coco = parse_coco(read_coco_json(split.json), split.json)
    header = {"signature": signature, "category_ids": coco.category_ids, "category_names": coco.category_names}
    _write_pickles(files, [header, coco])
    return coco


def coco_categories(split: CocoSplit, cache_dir: str | Path | None = None) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(category ids, names) of a COCO split, sorted by id: from its cache file's header when that is
    current, else by parsing the file (and caching it)."""
    signature = _coco_signature(split)
    files = _coco_cache_files(split, cache_dir)
    header, _ = _read_coco_cache(files, signature, header_only=True)
    if header is not None:
        return tuple(header["category_ids"]), tuple(header["category_names"])
    coco = _parse_and_cache(split, files, signature)
    return coco.category_ids, coco.category_names


def _load_coco_split(
    split: CocoSplit, classes: tuple[str, ...], category_ids: Sequence[int] | None, cache_dir: str | Path | None
) -> list[dict]:
    signature = _coco_signature(split)
    files = _coco_cache_files(split, cache_dir)
    _, coco = _read_coco_cache(files, signature, header_only=False)
    if coco is None:
        coco = _parse_and_cache(split, files, signature)
    if coco.category_names != classes or (category_ids is not None and coco.category_ids != tuple(category_ids)):
        theirs = ", ".join(f"{i}: {n}" for i, n in zip(coco.category_ids[:4], coco.category_names))
        ours = ", ".join(classes[:4])
        raise UserError(
            f"{split.json}: its {len(coco.category_ids)} categories ({theirs}, ...) differ from the dataset's "
            f"{len(classes)} classes ({ours}, ...) (train and test files need the same categories)"
        )
    _check_coco_images(split, coco)
    message = coco.bad.message(split.json)
    if message:
        warnings.warn(message, DataWarning, stacklevel=3)
    return coco.records(split.images)


def _check_coco_images(split: CocoSplit, coco: CocoAnnotations) -> None:
    """Every image of the file exists in the image folder (one listing per folder, not a stat per image)."""
    folder = Path(split.images)
    if not folder.is_dir():
        raise UserError(f"{folder}: image folder not found (needed by {split.json})")
    listings: dict[str, set] = {}
    missing = []
    for i, name in enumerate(coco.file_names):
        sub, _, base = name.rpartition("/")
        if sub not in listings:
            try:
                listings[sub] = set(os.listdir(folder / sub))
            except OSError:
                listings[sub] = set()
        if base not in listings[sub]:
            missing.append(i)
    if missing:
        i = missing[0]
        more = f" ({len(missing) - 1} more images are missing)" if len(missing) > 1 else ""
        image = folder / coco.file_names[i]
        raise UserError(f"{split.json}: image {int(coco.image_ids[i])} is listed but {image} does not exist{more}")
