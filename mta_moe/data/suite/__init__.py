"""The bundled multi-task suites, generated offline from a seed: ``bundled`` (9 tasks over 3 task types, where
settings are chosen) and ``confirm`` (12 tasks, where they are confirmed)."""

from .build import (
    DEFAULT_SUITE,
    SPLITS,
    SUITES,
    SuiteSizes,
    build_suite,
    chance_levels,
    data_card,
    render_card,
    suite_spec,
    write_suite,
)
from .spec import SuiteSpec, SuiteTask
from .tasks import CONFLICTS, HELPS, SUITE_TASKS

__all__ = [
    "CONFLICTS",
    "DEFAULT_SUITE",
    "HELPS",
    "SPLITS",
    "SUITES",
    "SUITE_TASKS",
    "SuiteSizes",
    "SuiteSpec",
    "SuiteTask",
    "build_suite",
    "chance_levels",
    "data_card",
    "render_card",
    "suite_spec",
    "write_suite",
]
