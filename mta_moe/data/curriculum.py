"""Curriculum: phases that say from which step which tasks take part, and with what weight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Mapping, Sequence

from pydantic import Field, with_config
from typing_extensions import Required, TypedDict

from ..typed_config import SECTION, ConfigError, check_known_tasks, check_value


@with_config(SECTION)
class PhaseSpec(TypedDict, total=False):
    """One phase of ``mta.data.curriculum`` as a config file writes it."""

    start_step: Required[Annotated[int, Field(ge=0, description="the step the phase starts at (the first: 0)")]]
    tasks: Annotated[
        list[Annotated[str, Field(min_length=1)]] | None,
        Field(min_length=1, description="the tasks that take part (null: every task)"),
    ]
    weights: Annotated[
        dict[str, Annotated[float, Field(ge=0)]] | None,
        Field(description="{task: weight}: multiplies the sampler's mixing rate"),
    ]


PHASES = Annotated[list[PhaseSpec], Field(min_length=1)]


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
        """The curriculum of a config's phase list; a ConfigError names the first bad key (a task not in
        ``known_tasks``, a phase that does not start after the one before)."""
        items = check_value(PHASES, raw, key, "a non-empty list of phases")
        phases, previous = [], -1
        for index, item in enumerate(items):
            where = f"{key}[{index}]"
            start = item["start_step"]
            if index == 0 and start != 0:
                raise ConfigError(f"{where}.start_step: the first phase must start at step 0, got {start}")
            if start <= previous:
                raise ConfigError(f"{where}.start_step: must be larger than the previous phase's ({previous})")
            previous = start
            tasks, weights = item.get("tasks"), item.get("weights") or {}
            check_known_tasks(tasks or [], known_tasks, f"{where}.tasks")
            check_known_tasks(weights, known_tasks, f"{where}.weights")
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
        return [
            0.0 if phase.tasks is not None and t not in phase.tasks else float(phase.weights.get(t, 1.0)) for t in tasks
        ]
