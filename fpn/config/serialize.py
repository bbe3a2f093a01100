"""Configs as plain data: to and from dicts and JSON files, and ``--set section.field=value`` overrides."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path
from typing import Any

from fpn.config.presets import PRESET_ALIASES
from fpn.config.sections import Config
from fpn.errors import UserError


SECTIONS = ("data", "model", "solver", "runtime")
# keys of older configs and checkpoints -> where they live now (None: no longer a setting)
LEGACY_KEYS = {
    "device": "runtime.device",
    "solver.amp": "runtime.amp",
    "solver.amp_used": None,  # the precision a run resolved: recorded beside the config (checkpoint "precision")
    "model.channels_last": "runtime.channels_last",
    "model.fuse_frozen_bn": "runtime.fuse_frozen_bn",
    "model.compile": "runtime.compile",
    "model.pool_impl": "runtime.pool_impl",
    "model.nms_impl": "runtime.nms_impl",
}


def to_dict(cfg: Config, runtime: bool = True) -> dict[str, Any]:
    """Plain data; ``runtime=False`` leaves out how it ran (what a checkpoint stores as its config)."""
    d = dataclasses.asdict(cfg)
    if not runtime:
        del d["runtime"]
    return d


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict`` output (or an older config's, ``LEGACY_KEYS``); unknown keys are an error,
    missing keys keep defaults."""
    cfg = Config()
    for key, value in d.items():
        if key in SECTIONS and isinstance(value, dict):
            for k, v in value.items():
                _set_key(cfg, f"{key}.{k}", v, f"config key '{key}.{k}'")
        else:
            _set_key(cfg, key, value, f"config key '{key}'")
    cfg.preset = PRESET_ALIASES.get(cfg.preset, cfg.preset)
    return cfg


def _set_key(cfg: Config, key: str, value: Any, where: str) -> None:
    """Set ``key`` ("section.field" or "field"), following ``LEGACY_KEYS``."""
    key = LEGACY_KEYS.get(key, key)
    if key is None:
        return
    *path, name = key.split(".")
    target: Any = cfg
    for p in path:
        if not dataclasses.is_dataclass(target) or p not in SECTIONS or not hasattr(target, p):
            raise UserError(f"{where}: unknown config key '{key}'")
        target = getattr(target, p)
    _set_field(target, name, value, key, flag=where)


def save_json(cfg: Config, path: str | Path) -> None:
    from fpn.io import atomic_write_text

    atomic_write_text(path, json.dumps(to_dict(cfg), indent=2) + "\n")


def load_json(path: str | Path) -> Config:
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: a config file must hold a JSON object")
    return from_dict(d)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings (``--set``); values are Python/JSON literals or bare strings."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item}: expected key=value, e.g. model.backbone=res50 (other arguments go "
                            "before --set or after --)")  # fmt: skip
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if LEGACY_KEYS.get(key.strip(), key) is None:
            raise UserError(f"--set {item}: {key.strip()} is no longer a setting (a run records it)")
        _set_key(cfg, key.strip(), value, f"--set {item}")
    return cfg


def _set_field(obj: Any, name: str, value: Any, key: str, flag: str | None = None) -> None:
    where = flag or f"config key '{key}'"
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if name not in fields or dataclasses.is_dataclass(getattr(obj, name)):
        raise UserError(f"{where}: unknown config key '{key}'")
    current = getattr(obj, name)
    setattr(obj, name, _coerce(value, current, where))


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Convert ``value`` to the type of the field's current value (tuples from lists, int to float...)."""
    if isinstance(current, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, (bool, int)):
            return bool(value)
    elif isinstance(current, tuple):
        if isinstance(value, (int, float)):
            value = (value,)
        if isinstance(value, (list, tuple)):
            elem = type(current[0]) if current else None
            try:
                return tuple(elem(v) if elem else v for v in value)
            except (TypeError, ValueError):
                pass
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(current, str):
        return str(value)
    else:
        return value
    raise UserError(f"{where}: expected a value like {current!r}, got {value!r}")
