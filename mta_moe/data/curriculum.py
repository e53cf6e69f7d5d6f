"""Curriculum: phases that say from which step which tasks take part, and with what weight."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..config import ConfigError


@dataclass(frozen=True)
class Phase:
    start_step: int
    tasks: tuple[str, ...] | None  # None: every task
    weights: Mapping[str, float]  # multiplies the sampler's mixing rate; absent tasks keep 1.0


class Curriculum:
    """Phases ordered by ``start_step`` (the first starts at 0); the last one whose start has passed is active."""

    def __init__(self, phases: Sequence[Phase]) -> None:
        self.phases = list(phases)

    @classmethod
    def from_list(cls, raw: Any, known_tasks: Sequence[str], key: str = "mta.data.curriculum") -> "Curriculum":
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{key}: must be a non-empty list of phases, got {raw!r}")
        phases, previous = [], -1
        for index, item in enumerate(raw):
            where = f"{key}[{index}]"
            if not isinstance(item, Mapping):
                raise ConfigError(f"{where}: must be an object with start_step, tasks, weights")
            unknown = sorted(set(item) - {"start_step", "tasks", "weights"})
            if unknown:
                raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed: start_step, tasks, weights")
            start = item.get("start_step")
            if not isinstance(start, int) or isinstance(start, bool) or start < 0:
                raise ConfigError(f"{where}.start_step: must be an integer >= 0, got {start!r}")
            if index == 0 and start != 0:
                raise ConfigError(f"{where}.start_step: the first phase must start at step 0, got {start}")
            if start <= previous:
                raise ConfigError(f"{where}.start_step: must be larger than the previous phase's ({previous})")
            previous = start
            tasks = item.get("tasks")
            if tasks is not None:
                if not isinstance(tasks, list) or not tasks:
                    raise ConfigError(f"{where}.tasks: must be a non-empty list of task names or null")
                _known(tasks, known_tasks, f"{where}.tasks")
            weights = item.get("weights") or {}
            if not isinstance(weights, Mapping):
                raise ConfigError(f"{where}.weights: must be an object {{task: weight}}")
            _known(list(weights), known_tasks, f"{where}.weights")
            for name, value in weights.items():
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                    raise ConfigError(f"{where}.weights.{name}: must be a number >= 0, got {value!r}")
            phases.append(Phase(start, None if tasks is None else tuple(tasks), dict(weights)))
        return cls(phases)

    def phase_at(self, step: int) -> Phase:
        active = self.phases[0]
        for phase in self.phases:
            if phase.start_step <= step:
                active = phase
        return active

    def multipliers(self, step: int, tasks: Sequence[str]) -> list[float]:
        """Per task: 0 when the active phase leaves it out, else its phase weight (default 1)."""
        phase = self.phase_at(step)
        return [0.0 if phase.tasks is not None and t not in phase.tasks else float(phase.weights.get(t, 1.0))
                for t in tasks]


def _known(names: list[Any], known: Sequence[str], key: str) -> None:
    bad = [n for n in names if n not in known]
    if bad:
        raise ConfigError(f"{key}: unknown task {bad[0]!r}; tasks in the data: {list(known)}")
