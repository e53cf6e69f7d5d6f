"""The bundled multi-task suite: 9 tasks over 3 task types, generated offline from a seed."""
from .build import SPLITS, SuiteSizes, build_suite, chance_levels, render_card, write_suite
from .tasks import CONFLICTS, HELPS, SUITE_TASKS, SuiteTask

__all__ = ["CONFLICTS", "HELPS", "SPLITS", "SUITE_TASKS", "SuiteSizes", "SuiteTask", "build_suite",
           "chance_levels", "render_card", "write_suite"]
