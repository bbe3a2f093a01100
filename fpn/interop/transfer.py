"""Starting a model from another detection checkpoint: all its weights, the box predictor's class rows matched by name.

``fpn train --init CKPT`` (training on another dataset) and ``fpn test`` on a checkpoint of other classes (zero-shot)
use it. The box predictor's class-specific rows (``cls_score``: one row per class, ``bbox_pred``: four per class;
row 0 / rows 0..3 are the background's) are taken from the source class of the same name; a class without one
starts from the fresh model's rows (its initialisation). Every other weight is copied as it is and must have the
same shape.

Names match when equal, else when equal after lower-casing and dropping spaces, "_" and "-" ("dining table" =
"diningtable"), else through :data:`ALIASES`, PASCAL VOC's names of COCO classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from fpn.checkpoint import check_compatible, unwrap
from fpn.errors import UserError

# PASCAL VOC name -> COCO name, for classes the two datasets spell differently
ALIASES = {
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "motorbike": "motorcycle",
    "pottedplant": "potted plant",
    "sofa": "couch",
    "tvmonitor": "tv",
}
CLS_SCORE = "roi_heads.box_head.cls_score"
BBOX_PRED = "roi_heads.box_head.bbox_pred"
# settings that change what the weights compute: where an --init checkpoint's differ from the run's, it is said
CONVENTIONS = ("data.normalization", "data.resize", "model.anchor_sizes", "model.anchor_ratios", "model.anchor_round",
               "model.anchor_strides_from_input", "model.rpn_score", "model.roi_canonical_size",
               "model.roi_canonical_level", "model.roi_level_eps_in_log", "model.pool_aligned",
               "model.bbox_reg_weights")  # fmt: skip


def _key(name: str) -> str:
    return "".join(c for c in name.lower() if c not in " _-")


_ALIAS_KEYS = {_key(a): _key(b) for a, b in ALIASES.items()}


def _canonical(name: str) -> str:
    key = _key(name)
    return _ALIAS_KEYS.get(key, key)


@dataclass
class ClassMatch:
    """``source_index[j]``: the index into ``source`` of target class ``target[j]``'s match, or None."""

    source: tuple[str, ...]
    target: tuple[str, ...]
    source_index: tuple[int | None, ...]

    @property
    def new(self) -> list[str]:
        return [t for t, i in zip(self.target, self.source_index) if i is None]

    def describe(self) -> str:
        """One line: how many matched, the pairs (renamed ones as target <- source), the new classes."""
        pairs = [t if self.source[i] == t else f"{t} <- {self.source[i]}"
                 for t, i in zip(self.target, self.source_index) if i is not None]  # fmt: skip
        text = f"{len(pairs)} of {len(self.target)} classes matched from the checkpoint's {len(self.source)}"
        text += f" ({', '.join(pairs)})" if pairs else ""
        new = self.new
        return text + (f"; new, trained from scratch: {', '.join(new)}" if new else "")


def match_classes(source: Sequence[str], target: Sequence[str]) -> ClassMatch:
    """Each target class's source class: the same name, else the same canonical name (see the module docstring)."""
    source, target = tuple(source), tuple(target)
    exact = {name: i for i, name in enumerate(source)}
    canonical: dict[str, int] = {}
    for i, name in enumerate(source):
        canonical.setdefault(_canonical(name), i)
    index = tuple(exact.get(t, canonical.get(_canonical(t))) for t in target)
    return ClassMatch(source, target, index)


def transfer_state(source_state: dict[str, Tensor], match: ClassMatch, fresh_state: dict[str, Tensor] | None = None,
                   where: str = "--init") -> dict[str, Tensor]:  # fmt: skip
    """The source weights with the box predictor's class rows rearranged for ``match.target``: row 0
    (background) and each matched class's rows from the source, a new class's rows from ``fresh_state``
    (needed only when ``match.new``). A class-agnostic ``bbox_pred`` (4 rows) is copied whole."""
    state = dict(source_state)
    fresh = fresh_state or {}
    for prefix, per_class in ((CLS_SCORE, 1), (BBOX_PRED, 4)):
        for suffix in ("weight", "bias"):
            key = f"{prefix}.{suffix}"
            src = source_state.get(key)
            if src is None:
                raise UserError(f"{where}: the checkpoint has no {key} (not an fpn detector's weights)")
            if per_class == 4 and src.shape[0] == 4:  # class-agnostic deltas: no class rows
                continue
            if src.shape[0] != per_class * (len(match.source) + 1):
                raise UserError(f"{where}: {key} has {src.shape[0]} rows, not {per_class} per class of its "
                                f"{len(match.source)} classes and the background")  # fmt: skip
            blocks = [src[:per_class]]  # background
            for j, i in enumerate(match.source_index, start=1):
                rows = slice(per_class * j, per_class * (j + 1))
                blocks.append(fresh[key][rows] if i is None else src[per_class * (i + 1): per_class * (i + 2)])
            state[key] = torch.cat(blocks).clone()
    return state


def load_transferred(model: nn.Module, ckpt: dict, path: str | Path, classes: Sequence[str]) -> ClassMatch:
    """Load ``ckpt``'s weights into ``model`` (built for ``classes``) with class rows matched by name; a weight of
    another shape or name is a one-line UserError naming the checkpoint."""
    model = unwrap(model)
    match = match_classes(ckpt["classes"], classes)
    fresh = {k: v.detach() for k, v in model.state_dict().items()}
    state = transfer_state(ckpt["model"], match, fresh, where=f"--init {path}")
    mismatched = [k for k in fresh if k in state and state[k].shape != fresh[k].shape]
    missing = [k for k in fresh if k not in state]
    unexpected = [k for k in state if k not in fresh]
    if mismatched or missing or unexpected:
        if mismatched:
            k = mismatched[0]
            detail = f"{k} is {tuple(state[k].shape)} in the checkpoint, {tuple(fresh[k].shape)} here"
        else:
            detail = f"missing {', '.join(missing[:2])}" if missing else f"unexpected {', '.join(unexpected[:2])}"
        net = ckpt.get("net", "?")
        raise UserError(
            f"--init {path}: its weights do not fit this model ({detail}); it is a {net} model: use its architecture "
            "(--net, or a preset such as voc07_res50_coco_init for a converted torchvision model)"
        )
    model.load_state_dict(state)
    return match


def convention_notes(ckpt: dict, cfg) -> list[str]:
    """The :data:`CONVENTIONS` settings of the checkpoint's config that differ from ``cfg``'s, as "key=theirs (this
    run: ours)"."""
    notes = []
    for name in CONVENTIONS:
        section, field = name.split(".")
        ours = getattr(getattr(cfg, section), field)
        theirs = ckpt.get("config", {}).get(section, {}).get(field, ours)
        if _plain(theirs) != _plain(ours):
            notes.append(f"{name}={theirs!r} (this run: {ours!r})")
    return notes


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def zero_shot_checkpoint(ckpt: dict, path: str | Path, classes: Sequence[str]) -> tuple[dict, ClassMatch]:
    """``ckpt`` with its predictor rows picked for ``classes``, every one of which must match a checkpoint class
    (else the usual "classes differ" UserError, naming the unmatched ones)."""
    match = match_classes(ckpt["classes"], classes)
    if match.new:
        try:
            check_compatible(ckpt, path, classes=classes)  # raises: the classes differ (its usual message)
        except UserError as e:
            raise UserError(f"{e}; no checkpoint class matches {', '.join(match.new[:4])}"
                            f"{', ...' if len(match.new) > 4 else ''}") from None  # fmt: skip
    state = transfer_state(ckpt["model"], match, where=str(path))
    return {**ckpt, "model": state, "classes": tuple(classes)}, match
