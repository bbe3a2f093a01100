"""Which folders a dataset name means, and reading their annotations into records (cached).

A dataset is a :class:`DatasetSpec`: class names, the image sets (devkit year folder + split) used for
training and for testing, the VOC year and the AP metric. :func:`resolve_dataset` maps a name to one:

- ``pascal_voc``: VOC2007 trainval / VOC2007 test;
- ``pascal_voc_0712``: VOC2007 + VOC2012 trainval / VOC2007 test;
- ``synthetic``: the folder ``{data_dir}/synthetic`` written by ``fpn synth`` (classes from its classes.txt);
- any other value: a path to a VOC-layout folder with a ``classes.txt``.

:func:`load_records` reads an image set's annotations into records (see :mod:`fpn.data.voc`). Parsing
16k XML files takes seconds, so the records are pickled in a cache file that is used only while a cheap
signature (the split file's bytes, each XML file's mtime and size) still matches.
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

from fpn.data.voc import VOC_CLASSES, parse_voc_xml
from fpn.errors import UserError
from fpn.io import atomic_write_bytes

VOC_URLS = {
    "2007": "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/",
    "2012": "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
}
VOC_ARCHIVES = {
    "2007": ("VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar"),
    "2012": ("VOCtrainval_11-May-2012.tar",),
}
CACHE_VERSION = 1  # bump when the record format or the parser changes: old cache files are then ignored
CACHE_SUBDIR = "annotations_cache"


@dataclass(frozen=True)
class ImageSet:
    """One split of one VOC-layout folder: ``{root}/ImageSets/Main/{split}.txt``."""

    root: Path
    split: str

    @property
    def list_file(self) -> Path:
        return Path(self.root) / "ImageSets" / "Main" / f"{self.split}.txt"


@dataclass
class DatasetSpec:
    """What a dataset name resolved to. ``year`` is the year of the test set ("2007" for 07+12, "custom"
    when a custom folder's name carries none); ``metric`` is "voc07" (11-point AP) or "area"."""

    name: str
    classes: tuple[str, ...]
    train_sets: list[ImageSet] = field(default_factory=list)
    test_sets: list[ImageSet] = field(default_factory=list)
    year: str = "2007"
    metric: str = "voc07"


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


def resolve_dataset(name: str, data_dir: str | Path = "data") -> DatasetSpec:
    """Map a dataset name (or a folder path) to its spec; a UserError when the data is not there."""
    data_dir = Path(data_dir)
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
    return _custom_dataset(name)


def _custom_dataset(name: str) -> DatasetSpec:
    root = Path(name)
    if not root.is_dir():
        raise UserError(
            f"unknown dataset '{name}': use pascal_voc, pascal_voc_0712, synthetic, or the path of a "
            "VOC-layout folder (JPEGImages/, Annotations/, ImageSets/Main/<split>.txt, classes.txt)"
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
    return DatasetSpec(str(root), classes, [train], [test], year or "custom", metric)


# --- reading records ---------------------------------------------------------------------------------------


def load_records(
    image_sets: Sequence[ImageSet], classes: Sequence[str], cache_dir: str | Path | None = None
) -> list[dict]:
    """All records of the image sets, in list-file order (see :mod:`fpn.data.voc` for the format).

    Labels are 1-based indices into ``classes``. Each image set's records are cached in ``cache_dir``
    (default ``{root}/annotations_cache``, else the user cache folder when that is not writable); a cache
    file is used only while the list file's bytes and every XML file's mtime and size are unchanged.
    Raises UserError for a missing or empty list file, a missing annotation or image, or a bad annotation.
    """
    classes = tuple(classes)
    records: list[dict] = []
    for image_set in image_sets:
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


def _cache_dirs(image_set: ImageSet, cache_dir: str | Path | None) -> list[Path]:
    if cache_dir is not None:
        return [Path(cache_dir)]
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fpn" / CACHE_SUBDIR
    return [Path(image_set.root) / CACHE_SUBDIR, user]


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
    blob = pickle.dumps({"signature": signature, "records": records}, protocol=pickle.HIGHEST_PROTOCOL)
    errors = []
    for f in files:
        try:
            atomic_write_bytes(f, blob)
            return
        except OSError as e:
            errors.append(f"{f.parent} ({e.strerror})")
    warnings.warn(f"annotation cache not written, not writable: {', '.join(errors)}", stacklevel=3)


def _load_image_set(image_set: ImageSet, classes: tuple[str, ...], cache_dir: str | Path | None) -> list[dict]:
    root = Path(image_set.root)
    ids, raw_list = read_image_list(image_set.list_file, image_set.split)
    signature = _signature(image_set, ids, raw_list, classes)
    _check_images(image_set, ids)
    name = cache_file_name(image_set, classes)
    files = [d / name for d in _cache_dirs(image_set, cache_dir)]
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
