"""Reports of an ``EvalResult``: a per-class AP table, a JSON summary and precision/recall plots.
A COCO result (``CocoEvalResult``) adds its 12 summary numbers to the table and the JSON."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from fpn.errors import UserError
from fpn.evaluation.coco_eval import CocoEvalResult
from fpn.evaluation.voc_eval import EvalResult
from fpn.io import atomic_write_bytes, atomic_write_text

METRIC_NAMES = {"voc07": "voc07 11-point", "area": "area", "coco": "COCO AP@[.50:.95]"}


def _fmt(ap: float | None) -> str:
    return "n/a" if ap is None or math.isnan(ap) else f"{ap:.4f}"


def map_line(result: EvalResult) -> str:
    """``mAP = 0.7512 (voc07 11-point, 20 classes)``; classes left out (no ground truth) are named."""
    undefined = [c for c, ap in result.ap.items() if ap is None]
    detail = f"{METRIC_NAMES.get(result.metric, result.metric)}, {result.num_defined} classes"
    if undefined:
        detail += f"; without ground truth, excluded: {', '.join(undefined)}"
    return f"mAP = {_fmt(result.map)} ({detail})"


def format_table(result: EvalResult) -> str:
    """Aligned table: class, AP ("n/a" when undefined), non-difficult (non-crowd) GT count, detections; for
    COCO the 12 summary lines as pycocotools prints them; then the mAP line."""
    names = list(result.ap)
    width = max([len("class")] + [len(c) for c in names])
    rows = [f"{'class':<{width}}  {'AP':>6}  {'GT':>6}  {'dets':>7}"]
    for cls in names:
        gt, dets = result.npos.get(cls, ""), result.num_detections.get(cls, "")
        rows.append(f"{cls:<{width}}  {_fmt(result.ap[cls]):>6}  {gt:>6}  {dets:>7}")
    rows.append("-" * len(rows[0]))
    if isinstance(result, CocoEvalResult):
        rows += result.summary_lines()
    rows.append(map_line(result))
    return "\n".join(rows)


def write_json(result: EvalResult, path: str | Path) -> None:
    """Write ``{"metric": ..., "ap": {class: ap or null}, "map": m or null}`` atomically; a COCO result
    adds ``"stats": {"AP": ..., "AP50": ..., ...}`` (null where undefined)."""
    m = None if math.isnan(result.map) else float(result.map)
    ap = {c: (None if v is None else float(v)) for c, v in result.ap.items()}
    data = {"metric": result.metric, "ap": ap, "map": m}
    if isinstance(result, CocoEvalResult):
        data["stats"] = dict(result.stats)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def write_reports(result: EvalResult, json_path: str | Path | None, plot_path: str | Path | None) -> None:
    """The ``--json`` and ``--plot`` files of the ``*-eval`` commands (each only when given); a UserError
    naming the flag when one cannot be written."""
    for flag, path, write in (("--json", json_path, write_json), ("--plot", plot_path, plot_pr_curves)):
        if path:
            try:
                write(result, path)
            except OSError as e:
                raise UserError(f"{flag} {path}: cannot write ({e.strerror or e})") from None


def plot_pr_curves(result: EvalResult, path: str | Path) -> None:
    """Precision/recall curve of every class with detections and ground truth, one PNG, written atomically.

    Uses matplotlib's Agg canvas directly (no pyplot, no display, no global backend switch).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for cls, (recall, precision) in result.curves.items():
        ap = result.ap.get(cls)
        if ap is None or len(recall) == 0:
            continue
        ax.plot(recall, precision, linewidth=1.2, label=f"{cls} ({ap:.3f})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(map_line(result), fontsize=9)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
