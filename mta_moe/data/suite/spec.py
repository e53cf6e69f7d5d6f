"""What a bundled task suite is: its tasks (type, labels, metric, generator), the pairs that conflict or help,
and the text of its data card."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

Generator = Callable[[random.Random], tuple[str, str]]


@dataclass(frozen=True)
class SuiteTask:
    name: str
    type: str
    metric: str  # the primary metric: "accuracy", "exact_match" or "rouge_l"
    labels: tuple[str, ...] | None  # closed label set (classification / NLI); None for generation
    description: str
    generate: Generator

    @property
    def kind(self) -> str:
        """How the task is scored (``mta_moe.metrics``)."""
        return {"accuracy": "classification", "exact_match": "extraction", "rouge_l": "generation"}[self.metric]


@dataclass(frozen=True)
class SuiteSpec:
    """One bundled suite. ``version``: bumped whenever a generator changes what it draws (cached copies with
    another version are rebuilt); ``card_*``: the data card's title, closing paragraph of the conflict section,
    and vocabulary paragraph; ``module``: where its generators live."""

    name: str
    tasks: dict[str, SuiteTask]
    conflicts: list[tuple[str, str, str]]
    helps: list[tuple[str, str, str]]
    version: int
    card_title: str
    card_conflict_note: str
    card_vocabulary: str
    module: str
    card_intro: list[str] = field(default_factory=list)
