"""Warnings during training: a task's validation score falling below its best so far or below a known
single-task baseline (by more than a margin), and routing collapse."""

from __future__ import annotations

from typing import Any, Mapping

from ..evaluation.routing import collapse_warnings


class TrainingMonitor:
    """Keeps each task's best validation score; ``margin`` and ``baselines`` come from ``mta.train``."""

    def __init__(self, margin: float, baselines: Mapping[str, float] | None = None) -> None:
        self.margin = margin
        self.baselines = dict(baselines or {})
        self.best: dict[str, float] = {}
        self._routing_seen: set[str] = set()
        self._window: dict[str, tuple[list[float], list[list[float]]]] = {}

    def check_validation(self, scores: Mapping[str, float]) -> list[dict[str, Any]]:
        """One warning per task whose score is more than ``margin`` below its best so far or its baseline."""
        warnings = []
        for task, score in scores.items():
            if task == "macro":
                continue
            best = self.best.get(task)
            if best is not None and score < best - self.margin:
                warnings.append(
                    {
                        "task": task,
                        "reason": "below_best",
                        "score": score,
                        "reference": best,
                        "message": f"{task}: {score:.3f} is {best - score:.3f} below its best {best:.3f}",
                    }
                )
            baseline = self.baselines.get(task)
            if baseline is not None and score < baseline - self.margin:
                warnings.append(
                    {
                        "task": task,
                        "reason": "below_baseline",
                        "score": score,
                        "reference": baseline,
                        "message": f"{task}: {score:.3f} is {baseline - score:.3f} below its single-task "
                        f"baseline {baseline:.3f}",
                    }
                )
            self.best[task] = score if best is None else max(best, score)
        return warnings

    def add_routing(self, layers: Mapping[str, Mapping[str, Any]]) -> None:
        """Accumulate routing records (``RoutingSnapshot.as_dict`` per layer) until the next check."""
        for name, snapshot in layers.items():
            sequences, counts = self._window.setdefault(
                name, ([0.0] * len(snapshot["sequences"]), [[0.0] * len(r) for r in snapshot["adapter_counts"]])
            )
            for i, value in enumerate(snapshot["sequences"]):
                sequences[i] += value
            for row, new in zip(counts, snapshot["adapter_counts"]):
                for j, value in enumerate(new):
                    row[j] += value

    def check_routing(self) -> list[dict[str, Any]]:
        """Collapse warnings over the routing accumulated since the last check (then the window restarts);
        a warning is reported when it first appears, not again while it persists."""
        current = set()
        for name, (sequences, counts) in self._window.items():
            current.update(collapse_warnings(name, counts, sequences))
        self._window = {}
        new = sorted(current - self._routing_seen)
        self._routing_seen = current
        return [{"reason": "routing_collapse", "message": message} for message in new]

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = dict(state.get("best", {}))
