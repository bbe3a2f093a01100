"""The records of a dataset's splits, read from VOC XML, COCO JSON or YOLO txt and cached.

A split is an :class:`ImageSet` (a VOC list file), a :class:`CocoSplit` (a COCO JSON file + its image folder) or a
:class:`~fpn.data.yolo.YoloSplit` (an image folder + its label folder).
:func:`load_records` reads splits into records (see :mod:`fpn.data.voc` and :mod:`fpn.data.coco` for the
record format). Parsing 16k XML files or a COCO train2017 file takes seconds, so the records are pickled in a
cache file that is used only while a cheap signature (VOC: the split file's bytes, each XML file's mtime and
size; COCO: the JSON file's mtime and size; YOLO: each image's and label file's mtime and size, as the image sizes
come from the image headers) still matches.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fpn.data.coco import CocoAnnotations, parse_coco, read_coco_json
from fpn.data.voc import parse_voc_xml
from fpn.data.yolo import YoloSplit, list_images, read_split
from fpn.errors import DataWarning, UserError
from fpn.io import atomic_open

CACHE_VERSION = 1  # bump when the record format or the parser changes: old cache files are then ignored
COCO_CACHE_VERSION = 1  # the same for COCO files (fpn.data.coco)
YOLO_CACHE_VERSION = 1  # the same for YOLO splits (fpn.data.yolo)
CACHE_SUBDIR = "annotations_cache"


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



# --- reading records ---------------------------------------------------------------------------------------


def load_records(
    image_sets: Sequence[ImageSet | CocoSplit | YoloSplit],
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
        elif isinstance(image_set, YoloSplit):
            records += _load_yolo_split(image_set, classes, cache_dir)
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


# --- YOLO splits --------------------------------------------------------------------------------------------


def _stats(folder: Path, names: Sequence[str], suffix: str = "") -> np.ndarray:
    """(mtime_ns, size) of each ``folder/name`` (with ``suffix`` replacing the extension when given), (-1, -1) for
    a missing file."""
    stats = np.full((len(names), 2), -1, dtype=np.int64)
    for i, name in enumerate(names):
        try:
            st = os.stat(folder / (name.rsplit(".", 1)[0] + suffix if suffix else name))
        except FileNotFoundError:
            continue
        stats[i] = (st.st_mtime_ns, st.st_size)
    return stats


def _load_yolo_split(split: YoloSplit, classes: tuple[str, ...], cache_dir: str | Path | None) -> list[dict]:
    images, labels = Path(split.images), Path(split.labels)
    if not images.is_dir():
        raise UserError(f"{images}: image folder not found")
    names = list_images(images)
    if not names:
        raise UserError(f"{images}: holds no image files")
    h = hashlib.sha1(f"yolo v{YOLO_CACHE_VERSION}\0{images.resolve()}\0{labels.resolve()}\0".encode())
    h.update("\n".join(classes).encode() + b"\0" + "\n".join(names).encode() + b"\0")
    h.update(_stats(images, names).tobytes())
    h.update(_stats(labels, names, ".txt").tobytes())
    signature = h.hexdigest()
    key = hashlib.sha1(f"{images.resolve()}".encode()).hexdigest()[:12]
    files = [d / f"yolo_{split.split}_{key}.pkl" for d in _cache_dirs(labels.parent, cache_dir)]
    cached = _read_cache(files, signature)
    if cached is None:
        records, problems = read_split(split, names, len(classes))
        cached = {"records": records, "warning": problems.message(labels)}
        _write_cache(files, signature, cached)
    if cached["warning"]:  # said on every load, as a COCO file's bad boxes are
        warnings.warn(cached["warning"], DataWarning, stacklevel=3)
    records = cached["records"]
    # image paths are set here, not cached, so they follow the folder as the caller spelled it
    for rec in records:
        rec["image"] = str(images / rec["image"])  # relative in the cache (fresh objects on every load)
    return records
