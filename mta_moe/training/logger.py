"""Run logging on rank 0: one JSON object per line in ``metrics.jsonl`` and the same scalars in TensorBoard."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


class RunLogger:
    """``log(kind, step, values)``: appends ``{"kind", "step", **values}`` and writes numeric values as
    TensorBoard scalars ``kind/name`` (nested dicts flattened with ``/``)."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self._tb = SummaryWriter(str(out_dir / "tensorboard")) if enabled else None

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        for name, value in _flatten(values):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._tb.add_scalar(f"{kind}/{name}", value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _flatten(values: dict[str, Any], prefix: str = ""):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}/")
        elif isinstance(value, list):  # e.g. routing tables: one scalar per index
            yield from _flatten({str(i): item for i, item in enumerate(value)}, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value
