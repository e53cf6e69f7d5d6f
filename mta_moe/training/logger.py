"""Run logging on rank 0: one JSON object per line in ``metrics.jsonl``, the same scalars in TensorBoard, and,
when the DeepSpeed config enables monitors (``tensorboard``, ``csv_monitor``, ``wandb``, ``comet``), the same
scalars through DeepSpeed's monitor too."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # torch loads when a run logs, not when a config is checked
    from torch.utils.tensorboard import SummaryWriter


class RunLogger:
    """``log(kind, step, values)``: appends ``{"kind", "step", **values}`` and writes numeric values as
    TensorBoard scalars ``kind/name`` (nested dicts flattened with ``/``)."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.out_dir = out_dir
        self.path = out_dir / "metrics.jsonl"
        self._tb: SummaryWriter | None = None
        self._pending: list[tuple[str, int, dict[str, Any]]] | None = []  # held until start()
        self.monitor: Callable[[list[tuple[str, float, int]]], None] | None = None  # DeepSpeed's write_events

    def start(self) -> None:
        """Open metrics.jsonl and TensorBoard and write the records logged so far. Until then nothing is
        written, so a run that fails while starting leaves no files behind."""
        pending, self._pending = self._pending or [], None
        if self.enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
        for record in pending:
            self.log(*record)

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._pending is not None:
            self._pending.append((kind, step, values))
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        events = [
            (f"{kind}/{name}", float(value), step)
            for name, value in _flatten(values)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ]
        for name, value, _ in events:
            self._tb.add_scalar(name, value, step)
        self._tb.flush()
        if self.monitor is not None and events:
            self.monitor(events)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


MONITORS = ("tensorboard", "csv_monitor", "wandb", "comet")
MONITOR_PACKAGES = {"wandb": "wandb", "comet": "comet_ml"}


def monitor_config(ds: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """``ds`` with every enabled file monitor (``tensorboard``, ``csv_monitor``) that names no ``output_path``
    writing under ``out_dir/monitor`` (DeepSpeed's default is the working directory)."""
    ds = copy.deepcopy(dict(ds))
    for name in ("tensorboard", "csv_monitor"):
        section = ds.get(name)
        if isinstance(section, dict) and section.get("enabled") and not section.get("output_path"):
            section["output_path"] = str(out_dir / "monitor") + "/"
    return ds


def _flatten(values: dict[str, Any], prefix: str = ""):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}/")
        elif isinstance(value, list):  # e.g. routing tables: one scalar per index
            yield from _flatten({str(i): item for i, item in enumerate(value)}, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value
