"""Run logging: ``metrics.jsonl`` (one JSON object per line), TensorBoard scalars and console lines.

Only the main process logs. Lines of ``metrics.jsonl``::

    {"type": "train", "session", "epoch", "step", "iter", "loss", "losses": {name: value}, "lr",
     "time" (s/iter over the interval), "data_time" (s/iter waiting for data), "eta_s"}
    {"type": "eval", "session", "epoch", "iter", "split", "metric", "map", "ap": {class: ap or null}}

``epoch`` is 1-based; ``step`` counts iterations done in that epoch, ``iter`` iterations done in total.
TensorBoard scalars (x = ``iter``): ``loss/total``, ``loss/<name>``, ``lr``, ``time/iter``, ``eval/mAP``,
``eval/AP/<class>``.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


def format_train_line(record: dict, epochs: int, iters_per_epoch: int) -> str:
    """``[epoch 2/12][iter 20/250] loss 1.2345 (rpn_cls 0.1000 ...) lr 1.00e-03 0.250 s/it eta 0:10:00``."""
    parts = " ".join(f"{k} {v:.4f}" for k, v in record["losses"].items())
    return (
        f"[epoch {record['epoch']}/{epochs}][iter {record['step']}/{iters_per_epoch}] "
        f"loss {record['loss']:.4f} ({parts}) lr {record['lr']:.2e} "
        f"{record['time']:.3f} s/it eta {format_eta(record['eta_s'])}"
    )


class RunLogger:
    """Appends to ``{run_dir}/metrics.jsonl`` and writes TensorBoard events into ``run_dir``.

    ``purge_step``: when resuming, TensorBoard events and ``metrics.jsonl`` records (of ``session``) at or
    after this iteration, left by the earlier run after its checkpoint (a run killed between checkpoints),
    are dropped, so the curves do not double back.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, purge_step: int | None = None,
                 session: int | None = None):  # fmt: skip
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if purge_step is not None:
            _purge_jsonl(self.run_dir / "metrics.jsonl", purge_step, session)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge_step)

    def _write(self, record: dict) -> None:
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def log_train(self, record: dict) -> None:
        self._write({"type": "train", **record})
        if self._tb is not None:
            it = record["iter"]
            self._tb.add_scalar("loss/total", record["loss"], it)
            for name, value in record["losses"].items():
                self._tb.add_scalar(f"loss/{name}", value, it)
            self._tb.add_scalar("lr", record["lr"], it)
            self._tb.add_scalar("time/iter", record["time"], it)

    def log_eval(self, record: dict) -> None:
        """``record``: session, epoch, iter, split, metric, map, ap."""
        self._write({"type": "eval", **record})
        if self._tb is not None:
            it = record["iter"]
            if record["map"] is not None:
                self._tb.add_scalar("eval/mAP", record["map"], it)
            for cls, ap in record["ap"].items():
                if ap is not None:
                    self._tb.add_scalar(f"eval/AP/{cls}", ap, it)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _purge_jsonl(path: Path, purge_step: int, session: int | None) -> None:
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)

    def later(line: str) -> bool:
        try:
            record = json.loads(line)
        except ValueError:
            return False
        return record.get("session") == session and record.get("iter", -1) >= purge_step

    kept = [line for line in lines if not later(line)]
    if len(kept) < len(lines):
        from fpn.io import atomic_write_text

        atomic_write_text(path, "".join(kept))
