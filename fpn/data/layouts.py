"""Where the files of a COCO-JSON or YOLO dataset folder are: its layout, detected from the folder's contents.

COCO layout A: ``annotations/instances_<S>.json`` (or ``<S>.json``) beside image folders; layout B: ``train/``,
``valid/`` (or ``val/``), ``test/`` folders each with one ``.json`` and its images (Roboflow's export).
YOLO: ``data.yaml`` and ``images/<S>/`` with ``labels/<S>/`` (Ultralytics) or ``<S>/images/`` with ``<S>/labels/``
(Roboflow's "YOLO" export): :func:`find_yolo_layout`.
"""

from __future__ import annotations

import re
from pathlib import Path

from fpn.data.records import CocoSplit
from fpn.data.yolo import YoloSplit, class_names, labels_folder, parse_data_yaml
from fpn.errors import UserError

# stems of the annotation files of layout A: instances_<split>.json or <split>.json, split train*/val*/test*
COCO_FILE = re.compile(r"(?:instances_)?((train|val|test)\w*)", re.IGNORECASE)
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
        m = COCO_FILE.fullmatch(path.stem)
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
    split = COCO_FILE.fullmatch(json_path.stem).group(1)
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



# --- YOLO txt ---------------------------------------------------------------------------------------------------

# the folders a YOLO dataset's splits are in when data.yaml does not name them: Ultralytics' images/<split>, then
# Roboflow's <split>/images (test wins over valid over val, as for COCO's split folders)
_YOLO_FOLDERS = {
    "train": ("images/train", "train/images"),
    "test": ("images/test", "test/images", "images/valid", "valid/images", "images/val", "val/images"),
}
YOLO_YAML = ("data.yaml", "data.yml")


def find_yolo_layout(root: Path) -> tuple[str, tuple[str, ...], list[YoloSplit], list[YoloSplit]] | None:
    """YOLO txt labels in ``root``: (what was found, class names, train splits, test splits), or None when it is
    not a YOLO dataset. The classes come from ``data.yaml`` (``names``; or the one ``*.yaml`` in ``root`` that has
    them), else ``classes.txt`` (labelImg's export). The splits are data.yaml's ``train`` and ``test`` (else
    ``val``) folders (relative to its ``path``, else to ``root``), else ``images/{train,test,valid,val}/`` or
    ``{train,test,valid,val}/images/``; each split's labels are in the same path with ``images`` replaced by
    ``labels``. Not a YOLO dataset: no data.yaml and no ``labels`` folder beside a split's images."""
    from fpn.data.catalog import (
        read_classes,  # the classes.txt reader (catalog imports this module at load)
    )

    yaml_path = _yolo_yaml(root)
    data: dict = {}
    if yaml_path is not None:
        try:
            text = yaml_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{yaml_path}: cannot read ({e})") from None
        data = parse_data_yaml(text, yaml_path)
    base, note = _yolo_base(root, data, yaml_path)
    splits: dict[str, YoloSplit | None] = {}
    for role, keys in (("train", ("train",)), ("test", ("test", "val"))):
        splits[role] = None
        for key in keys:
            if data.get(key):
                splits[role] = _yaml_split(base, data[key], key, yaml_path)
                break
        else:
            for rel in _YOLO_FOLDERS[role]:
                images = root / rel
                if images.is_dir() and labels_folder(images).is_dir():
                    splits[role] = YoloSplit(images, labels_folder(images), rel.replace("images", "").strip("/"))
                    break
    train, test = splits["train"], splits["test"]
    if yaml_path is None and train is None and test is None:
        return None
    if yaml_path is not None and "names" in data:
        classes, named_by = class_names(data, yaml_path), yaml_path.name
    elif (root / "classes.txt").is_file():
        classes, named_by = read_classes(root / "classes.txt"), "classes.txt"
    else:
        where = yaml_path if yaml_path is not None else root / "data.yaml"
        raise UserError(f"{where}: a YOLO dataset needs the class names: 'names: [a, b, ...]' in data.yaml, or a "
                        "classes.txt with one name per line")  # fmt: skip
    if train is None and test is None:
        raise UserError(f"{yaml_path}: names no train or val folder, and {root} has neither images/train/ with "
                        "labels/train/ nor train/images/ with train/labels/")  # fmt: skip
    first = (train or test).images
    flavour = "Ultralytics" if _inside(first, root) and first.relative_to(root).parts[0] == "images" else "Roboflow"
    used = ", ".join(
        f"{role} {_rel(s.images, root)}/ (labels {_rel(s.labels, root)}/)" for role, s in (("train", train),
                                                                                         ("test", test)) if s
    )  # fmt: skip
    layout = f"YOLO txt ({flavour} layout, classes from {named_by}): {used}{note}"
    return layout, classes, [train] if train else [], [test] if test else []


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if _inside(path, root) else str(path)


def _yolo_yaml(root: Path) -> Path | None:
    for name in YOLO_YAML:
        if (root / name).is_file():
            return root / name
    others = [p for p in sorted(root.glob("*.y*ml")) if p.suffix in (".yaml", ".yml")]
    named = []
    for p in others:
        try:
            if re.search(r"^names\s*:", p.read_text(encoding="utf-8"), re.MULTILINE):
                named.append(p)
        except (OSError, UnicodeDecodeError):
            continue
    if len(named) > 1:
        raise UserError(f"{root}: several YOLO dataset files ({', '.join(p.name for p in named)}); keep one, or name "
                        "it data.yaml")  # fmt: skip
    return named[0] if named else None


def _yolo_base(root: Path, data: dict, yaml_path: Path | None) -> tuple[Path, str]:
    """The folder data.yaml's split paths are relative to: its ``path`` when that exists (absolute, or relative to
    the file's folder), else the dataset folder (a moved dataset: said in the layout line)."""
    path = data.get("path")
    if not path:
        return root, ""
    p = Path(str(path))
    p = p if p.is_absolute() else root / p
    if p.is_dir():
        return p, ""
    return root, f" (data.yaml's path {path} not found; paths taken relative to {root})"


def _yaml_split(base: Path, value, key: str, yaml_path: Path) -> YoloSplit:
    if isinstance(value, list):
        if len(value) != 1:
            raise UserError(f"{yaml_path}: '{key}' lists {len(value)} folders; fpn reads one folder per split")
        value = value[0]
    p = Path(str(value))
    images = p if p.is_absolute() else base / p
    if not images.exists() and str(value).startswith("../"):  # Roboflow writes ../train/images (as Ultralytics does)
        images = base / str(value)[3:]
    if images.suffix == ".txt":
        raise UserError(f"{yaml_path}: '{key}: {value}' is a list file; fpn reads a folder of images per split "
                        "(images/<split>/ with labels/<split>/)")  # fmt: skip
    if not images.is_dir():
        raise UserError(f"{yaml_path}: '{key}: {value}': folder {images} not found")
    split = images.name if images.name != "images" else images.parent.name
    return YoloSplit(images, labels_folder(images), split)
