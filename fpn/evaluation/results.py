"""VOC result files (``comp4_det_{split}_{class}.txt``) and the detections format.

Detections: ``{class_name: [(image_id, score, x1, y1, x2, y2), ...]}`` with VOC 1-based inclusive boxes.
A result file has one line per detection, ``image_id score x1 y1 x2 y2``, the score with 3 decimals and
the box with 1 decimal, as the devkit's Python port writes them. Evaluating the files therefore ranks by
the rounded scores, which can differ very slightly from evaluating the in-memory detections; reading the
files back (as ``fpn voc-eval`` does) gives exactly the numbers of the devkit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from fpn.data.voc import to_voc_box
from fpn.errors import UserError
from fpn.io import atomic_write_text


def result_file(results_dir: str | Path, split: str, cls: str) -> Path:
    """Path of the result file for one class."""
    return Path(results_dir) / f"comp4_det_{split}_{cls}.txt"


def _numpy(x) -> np.ndarray:
    """Tensor (any device) or array-like -> numpy, without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def detections_from_outputs(
    image_ids: Sequence[str], outputs: Sequence[Mapping], classes: Sequence[str]
) -> dict[str, list[tuple]]:
    """Model outputs (one dict per image: ``boxes`` (D, 4) continuous xyxy in original-image pixels,
    ``scores`` (D,), ``labels`` (D,) in 1..C) -> detections with VOC boxes; every class is a key."""
    if len(image_ids) != len(outputs):
        raise ValueError(f"{len(image_ids)} image ids but {len(outputs)} outputs")
    detections: dict[str, list[tuple]] = {cls: [] for cls in classes}
    for image_id, out in zip(image_ids, outputs):
        boxes = _numpy(out["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _numpy(out["scores"]).astype(np.float64).reshape(-1)
        labels = _numpy(out["labels"]).astype(np.int64).reshape(-1)
        if not (len(boxes) == len(scores) == len(labels)):
            raise ValueError(f"image '{image_id}': boxes, scores and labels differ in length")
        if labels.size and (labels.min() < 1 or labels.max() > len(classes)):
            raise ValueError(f"image '{image_id}': labels must lie in 1..{len(classes)}, got {labels.tolist()}")
        voc = np.stack(to_voc_box(boxes.T), axis=1) if len(boxes) else boxes
        for label, score, box in zip(labels.tolist(), scores.tolist(), voc.tolist()):
            detections[classes[label - 1]].append((str(image_id), score, *box))
    return detections


def write_result_files(
    results_dir: str | Path, split: str, detections: Mapping[str, Sequence[tuple]], classes: Sequence[str]
) -> list[Path]:
    """Write one file per class (empty when it has no detections), each atomically; returns the paths."""
    unknown = sorted(set(detections) - set(classes))
    if unknown:
        raise ValueError(f"detections for unknown classes: {unknown}")
    paths = []
    for cls in classes:
        lines = [
            f"{image_id} {score:.3f} {x1:.1f} {y1:.1f} {x2:.1f} {y2:.1f}\n"
            for image_id, score, x1, y1, x2, y2 in detections.get(cls, ())
        ]
        path = result_file(results_dir, split, cls)
        atomic_write_text(path, "".join(lines))
        paths.append(path)
    return paths


def _parse_line(path: Path, lineno: int, line: str, known_ids) -> tuple | None:
    fields = line.split()
    if not fields:
        return None  # blank lines carry nothing
    if len(fields) != 6:
        raise UserError(f"{path}:{lineno}: expected 6 fields 'image_id score x1 y1 x2 y2', got {len(fields)}")
    image_id = fields[0]
    if known_ids is not None and image_id not in known_ids:
        raise UserError(f"{path}:{lineno}: image '{image_id}' is not in the evaluated image set")
    values = []
    for name, raw in zip(("score", "x1", "y1", "x2", "y2"), fields[1:]):
        try:
            v = float(raw)
        except ValueError:
            raise UserError(f"{path}:{lineno}: {name} is not a number: '{raw}'") from None
        if not math.isfinite(v):
            raise UserError(f"{path}:{lineno}: {name} is not finite: '{raw}'")
        values.append(v)
    return (image_id, *values)


def read_result_files(
    results_dir: str | Path, split: str, classes: Sequence[str], image_ids: Iterable[str] | None = None
) -> dict[str, list[tuple]]:
    """Read the result files of ``classes``; a missing file means no detections for that class.

    With ``image_ids`` (the evaluated image set), a line naming another image is an error. Raises UserError
    naming file:line for a bad line, and naming the directory when it or every result file is missing.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"{results_dir}: results directory not found")
    known_ids = None if image_ids is None else set(map(str, image_ids))
    detections: dict[str, list[tuple]] = {}
    found = 0
    for cls in classes:
        path = result_file(results_dir, split, cls)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            detections[cls] = []
            continue
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a UTF-8 text file") from None
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e.strerror})") from None
        found += 1
        parsed = (_parse_line(path, n, line, known_ids) for n, line in enumerate(text.split("\n"), start=1))
        detections[cls] = [d for d in parsed if d is not None]
    if found == 0:
        raise UserError(
            f"{results_dir}: no result file comp4_det_{split}_<class>.txt for any of the {len(classes)} classes"
        )
    return detections
