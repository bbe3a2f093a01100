"""Where the files of a COCO-JSON dataset folder are: its layout, detected from the folder's contents.

Layout A: ``annotations/instances_<S>.json`` (or ``<S>.json``) beside image folders; layout B: ``train/``,
``valid/`` (or ``val/``), ``test/`` folders each with one ``.json`` and its images (Roboflow's export).
"""

from __future__ import annotations

import re
from pathlib import Path

from fpn.data.records import CocoSplit
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


