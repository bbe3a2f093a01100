"""YOLO txt labels (Ultralytics, Roboflow's "YOLO" export, labelImg): read a split, parse ``data.yaml``, write lines.

A label file is ``labels/.../<stem>.txt`` beside ``images/.../<stem>.<ext>`` (the last ``images`` folder of the
image's path replaced by ``labels``), one object per line::

    class cx cy w h            class: 0-based index into the names; the rest normalised to the image, in [0, 1]
    class cx cy w h score      a prediction written with a score (Ultralytics' --save-conf; fpn demo --save-labels)
    class x1 y1 x2 y2 x3 y3 ...  a polygon (Ultralytics segmentation labels): its bounding box is used

An image without a label file, or with an empty one, has no objects (a background image, as Ultralytics reads it).

Records are those of :mod:`fpn.data.voc` (continuous pixel xyxy: ``x1 = (cx - w / 2) * W``, ``x2 = (cx + w / 2) *
W``, the box a VOC file of 1-based inclusive ``xmin = x1 + 1 .. xmax = x2`` describes; a coordinate within 1e-6 of
the image side of a whole pixel, the resolution of 6 decimals, is that pixel) with labels ``class + 1``;
``difficult`` and ``truncated`` are all False (YOLO has no such flags). Image sizes come from the image headers
(EXIF orientation not applied, as the loader does not apply it).

Bad labels do not stop a run; as for COCO (:mod:`fpn.data.coco`) they are counted for one warning per split: a
line that is not 5 (or 6, or a polygon's 7+) numbers, or whose class is not an integer, is skipped (malformed); a
class id outside the names is skipped (unknown class); a box without positive width and height, with a non-finite
number, or with no part inside the image is dropped; one reaching more than ``CLIP_TOLERANCE`` px outside is
clipped (and counted; less is clipped silently: rounding in the exporting tool). An image whose header does not
read is left out (counted).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fpn.data.coco import CLIP_TOLERANCE
from fpn.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".dng", ".mpo", ".pfm")
_EXAMPLES = 3  # file:line places named per kind of problem in the warning


@dataclass(frozen=True)
class YoloSplit:
    """One split of a YOLO dataset: its image folder (searched recursively) and the matching label folder;
    ``split`` names it in output folders (train, val, test)."""

    images: Path
    labels: Path
    split: str


def labels_folder(images: Path) -> Path:
    """Where the labels of an image folder are: its last ``images`` path component replaced by ``labels``
    (``images/train`` -> ``labels/train``, ``train/images`` -> ``train/labels``); the folder itself when it has
    no ``images`` component (label files beside the images)."""
    parts = list(images.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images


# --- data.yaml ------------------------------------------------------------------------------------------------

_KEY = re.compile(r"([A-Za-z_][\w.-]*|\d+)\s*:(?:\s+(.*))?$")


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a '#' inside quotes is kept)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text: str, path: Path, n: int):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1].replace("''", "'") if text[0] == "'" else text[1:-1].replace('\\"', '"')
    if text and text[0] in "'\"":
        raise UserError(f"{path}:{n}: unterminated quoted string {text!r}")
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if text in ("null", "~", ""):
        return None
    return text


def _split_flow(body: str, path: Path, n: int) -> list[str]:
    """The comma-separated items of a flow list/mapping body, quotes respected."""
    items, cur, quote = [], "", None
    for c in body:
        if quote:
            cur += c
            quote = None if c == quote else quote
        elif c in "'\"":
            cur += c
            quote = c
        elif c == ",":
            items.append(cur)
            cur = ""
        elif c in "[]{}":
            raise UserError(f"{path}:{n}: nested lists or mappings are not read in data.yaml values")
        else:
            cur += c
    if quote:
        raise UserError(f"{path}:{n}: unterminated quoted string")
    items.append(cur)
    return [s.strip() for s in items if s.strip()]


def _flow(text: str, path: Path, n: int):
    """A one-line ``[a, b]`` list or ``{0: a, 1: b}`` mapping."""
    body = text[1:-1]
    if text[0] == "[":
        return [_scalar(s, path, n) for s in _split_flow(body, path, n)]
    out = {}
    for item in _split_flow(body, path, n):
        key, sep, value = item.partition(":")
        if not sep:
            raise UserError(f"{path}:{n}: expected 'key: value' in {text!r}")
        out[_scalar(key, path, n)] = _scalar(value, path, n)
    return out


def parse_data_yaml(text: str, path: str | Path) -> dict:
    """The top-level keys of a YOLO ``data.yaml``: the subset of YAML that Ultralytics and Roboflow write (scalars,
    ``[a, b]`` / ``{0: a}`` flow values, possibly over several lines, ``- item`` block lists and ``0: name`` block
    mappings one level deep, ``|`` block scalars). Deeper blocks under other keys (Roboflow's ``roboflow:``) are not
read. PyYAML is not
    a dependency of fpn: this is all that a data.yaml needs."""
    path = Path(path)
    out: dict = {}
    lines = text.splitlines()
    n = 0
    while n < len(lines):
        raw = lines[n]
        n += 1
        line = _strip_comment(raw)
        if not line.strip() or line.strip() in ("---", "..."):
            continue
        if line[0].isspace():
            raise UserError(f"{path}:{n}: unexpected indentation")
        m = _KEY.match(line)
        if not m:
            raise UserError(f"{path}:{n}: expected 'key: value', got {raw.strip()!r}")
        key, value = m.group(1), (m.group(2) or "").strip()
        start = n
        if value and value[0] in "[{":  # a flow value, possibly continued on the next lines
            close = "]" if value[0] == "[" else "}"
            while not value.endswith(close) and n < len(lines):
                value += " " + _strip_comment(lines[n]).strip()
                n += 1
            if not value.endswith(close):
                raise UserError(f"{path}:{start}: '{key}' opens {value[0]} but never closes it")
            out[key] = _flow(value, path, start)
        elif re.fullmatch(r"[|>][-+]?", value):  # a block scalar (Ultralytics' download: | script): its lines
            block = []
            while n < len(lines) and (not lines[n].strip() or lines[n][0].isspace()):
                block.append(lines[n].strip())
                n += 1
            out[key] = "\n".join(block).strip()
        elif value:
            out[key] = _scalar(value, path, start)
        else:  # a block below: "- item" lines or "k: v" lines, indented (or "- " at the key's own indentation)
            block = []
            while n < len(lines):
                nxt = _strip_comment(lines[n])
                if nxt.strip() and not (nxt[0].isspace() or nxt.startswith("- ")):
                    break
                if nxt.strip():
                    block.append((n + 1, nxt.strip()))
                n += 1
            out[key] = _block(block, path) if block else None
    return out


def _block(block: list[tuple[int, str]], path: Path):
    if block[0][1].startswith("-"):
        items = []
        for n, text in block:
            if not text.startswith("-"):
                raise UserError(f"{path}:{n}: expected '- item' in a list")
            items.append(_scalar(text[1:], path, n))
        return items
    mapping = {}
    for n, text in block:
        m = _KEY.match(text)
        if not m:
            return None  # a deeper structure (e.g. roboflow: workspace: ...): not one fpn reads
        mapping[_scalar(m.group(1), path, n)] = _scalar(m.group(2) or "", path, n)
    return mapping


def class_names(data: dict, path: str | Path) -> tuple[str, ...]:
    """The class names of a parsed data.yaml: ``names`` as a list, or as a ``{0: name, 1: name}`` mapping with
    the ids 0..C-1; ``nc``, when given, must be their number."""
    path = Path(path)
    names = data.get("names")
    if isinstance(names, dict):
        ids = sorted(names, key=lambda k: (not isinstance(k, int), str(k)))
        if ids != list(range(len(names))):
            raise UserError(f"{path}: 'names' must map the class ids 0..{len(names) - 1}, got ids {ids}")
        names = [names[i] for i in ids]
    if not isinstance(names, list) or not names:
        raise UserError(f"{path}: 'names' must list the class names (a list, or a mapping 0: name, 1: name, ...)")
    out: list[str] = []
    for i, name in enumerate(names):
        if name is None or not str(name).strip():
            raise UserError(f"{path}: class {i} has no name")
        name = str(name).strip()
        if name.lower() in (n.lower() for n in out):
            raise UserError(f"{path}: class name '{name}' is listed twice")
        out.append(name)
    nc = data.get("nc")
    if nc is not None and nc != len(out):
        raise UserError(f"{path}: nc is {nc} but 'names' lists {len(out)} classes")
    return tuple(out)


# --- label lines ----------------------------------------------------------------------------------------------


@dataclass
class YoloProblems:
    """What reading a split's labels skipped, dropped and clipped: counts and the first few ``file:line`` places."""

    total: int = 0  # label lines read (non-blank)
    counts: dict = field(default_factory=lambda: {"malformed": 0, "unknown class": 0, "dropped": 0, "clipped": 0,
                                                  "unreadable image": 0})  # fmt: skip
    places: dict = field(default_factory=dict)

    def add(self, kind: str, place: str) -> None:
        self.counts[kind] += 1
        shown = self.places.setdefault(kind, [])
        if len(shown) < _EXAMPLES:
            shown.append(place)

    def message(self, where: str | Path) -> str | None:
        """The one summary warning, or None when every label was fine."""
        what = {
            "malformed": "skipped {n} malformed lines (not 'class cx cy w h' numbers)",
            "unknown class": "skipped {n} lines with a class id outside the names",
            "dropped": "dropped {n} of {total} boxes (no positive width and height, or not inside the image)",
            "clipped": f"clipped {{n}} boxes reaching more than {CLIP_TOLERANCE:g} px outside the image",
            "unreadable image": "left out {n} images whose header does not read",
        }
        parts = []
        for kind, template in what.items():
            n = self.counts[kind]
            if n:
                places = ", ".join(self.places[kind]) + (", ..." if n > len(self.places[kind]) else "")
                parts.append(template.format(n=n, total=self.total) + f" ({places})")
        return f"{where}: " + "; ".join(parts) if parts else None


def _snap(v: float, side: int) -> float:
    """``v`` (pixels) made a whole pixel when it is within the format's resolution of one: 6 decimals of a
    normalised coordinate are 1e-6 of the image side, and a label tool's rounding of a box drawn on the pixel grid
    (as VOC boxes are) moves it by at most 0.75e-6 of the side; without this it would come back a hair off, which
    breaks the exact IoU ties of a pixel-grid box with the anchors and changes what a run trains on."""
    r = round(v) if math.isfinite(v) else v
    return float(r) if abs(v - r) <= 1e-6 * side else v


def parse_yolo_lines(
    text: str, width: int, height: int, num_classes: int, name: str = "", problems: YoloProblems | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One label file's text -> (boxes float32 (K, 4) continuous pixel xyxy clipped to the image, labels int64
    (K,) in 1..C, scores float32 (K,), NaN where a line has none). Bad lines are left out and, when ``problems``
    is given, counted there under ``name:line`` (module docstring)."""
    problems = problems if problems is not None else YoloProblems()
    boxes, labels, scores = [], [], []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        problems.total += 1
        place = f"{name}:{n}"
        try:
            values = [float(v) for v in fields[1:]]
            cls = float(fields[0])
        except ValueError:
            problems.add("malformed", place)
            continue
        if not cls.is_integer() or not (len(fields) in (5, 6) or (len(fields) >= 7 and len(fields) % 2 == 1)):
            problems.add("malformed", place)
            continue
        if not 0 <= cls < num_classes:
            problems.add("unknown class", f"{place} (class {int(cls)})")
            continue
        score = math.nan
        if len(fields) <= 6:
            cx, cy, w, h = values[:4]
            score = values[4] if len(values) == 5 else math.nan
            x1, y1, x2, y2 = (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height
        else:  # a polygon: its bounding box
            xs, ys = values[0::2], values[1::2]
            x1, y1, x2, y2 = min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height
        x1, x2 = _snap(x1, width), _snap(x2, width)
        y1, y2 = _snap(y1, height), _snap(y2, height)
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or not (x2 > x1 and y2 > y1):
            problems.add("dropped", place)
            continue
        over = max(-x1, -y1, x2 - width, y2 - height)
        c = (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))
        if not (c[2] > c[0] and c[3] > c[1]):
            problems.add("dropped", place)
            continue
        if over > CLIP_TOLERANCE:
            problems.add("clipped", place)
        boxes.append(c)
        labels.append(int(cls) + 1)
        scores.append(score)
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64),
            np.asarray(scores, dtype=np.float32))  # fmt: skip


def yolo_line(box: Sequence[float], label: int, width: int, height: int, score: float | None = None) -> str:
    """One label line (no newline) of a continuous pixel xyxy box and a 1-based label; 6 decimals (1e-6 of the
    image: below 0.01 px for images up to 10000 px), a 6th column with the score when given."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy, w, h = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height
    line = f"{int(label) - 1} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"
    return line if score is None else f"{line} {float(score):.5f}"


# --- a split --------------------------------------------------------------------------------------------------


def list_images(folder: Path) -> list[str]:
    """The image files under ``folder`` (recursively), as sorted posix paths relative to it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        rel = Path(dirpath).relative_to(folder)
        found += [(rel / f).as_posix() for f in filenames if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def record_id(rel: str) -> str:
    """A record's id: the image's path relative to the split's folder without its extension, whitespace replaced
    by '_' (VOC result files are whitespace-separated)."""
    return re.sub(r"\s", "_", rel.rsplit(".", 1)[0])


def check_ids(split: YoloSplit, names: Sequence[str]) -> list[str]:
    """The record ids of the images ``names``; a UserError naming both files when two give the same id."""
    ids, seen = [], {}
    for rel in names:
        i = record_id(rel)
        if i in seen:
            raise UserError(f"{split.images}: images {seen[i]} and {rel} have the same name without extension; "
                            "rename one")  # fmt: skip
        seen[i] = rel
        ids.append(i)
    return ids


def read_split(split: YoloSplit, names: Sequence[str], num_classes: int) -> tuple[list[dict], YoloProblems]:
    """Records of the images ``names`` (relative to ``split.images``) of a split, their ``image`` the path relative
    to it (the caller makes it absolute), and what was wrong (module docstring)."""
    from PIL import Image

    problems = YoloProblems()
    records = []
    for rel, image_id in zip(names, check_ids(split, names)):
        try:
            with Image.open(split.images / rel) as im:  # reads the header only
                width, height = im.size
        except Exception:  # noqa: BLE001 - any undecodable header: the image is left out, counted
            problems.add("unreadable image", rel)
            continue
        rel_txt = rel.rsplit(".", 1)[0] + ".txt"
        label_file = split.labels / rel_txt
        try:
            text = label_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{label_file}: cannot read labels ({e})") from None
        boxes, labels, _ = parse_yolo_lines(text, width, height, num_classes, rel_txt, problems)
        k = len(labels)
        records.append({
            "id": image_id, "image": rel, "width": int(width), "height": int(height), "boxes": boxes,
            "labels": labels, "difficult": np.zeros(k, dtype=bool), "truncated": np.zeros(k, dtype=bool),
        })  # fmt: skip
    return records, problems
