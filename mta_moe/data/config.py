"""The ``mta.data`` section: where the examples come from, how long they may be, how tasks are mixed."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..config import ConfigError, check_int, reject_unknown_keys
from ..metrics import KINDS as TASK_KINDS
from .formats import ON_ERROR
from .recipes import RECIPES
from .sampling import SamplingConfig
from .suite import DEFAULT_SUITE, SUITES

SPLIT_KEYS = ("train", "validation", "test")

SUITE_KEYS = ("name", "seed", "train", "validation", "test", "tasks")
RECIPE_KEYS = ("name", "splits", "data_files", "type", "limit")


@dataclass
class DataConfig:
    """``suite``: a bundled suite (``name``: ``bundled`` or ``confirm``; null: none); ``files``: {split: [paths]}
    in the canonical format; ``recipes``: hub datasets by name (``data_files`` {split: path} for local copies)."""

    suite: dict[str, Any] | None = field(default_factory=lambda: {"name": DEFAULT_SUITE, "seed": 0, "train": 1000,
                                                                   "validation": 100, "test": 200, "tasks": None})
    files: dict[str, list[str]] = field(default_factory=dict)
    recipes: list[dict[str, Any]] = field(default_factory=list)
    on_bad_rows: str = "raise"
    max_input_length: int = 128
    max_target_length: int = 32
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    curriculum: list[dict[str, Any]] | None = None
    task_kinds: dict[str, str] = field(default_factory=dict)  # {task: classification|extraction|generation}
    type_overrides: dict[str, str] = field(default_factory=dict)  # {task: task type}, replaces the data's type
    tasks: list[str] | None = None  # keep only these tasks of every source (null: all of them)
    # tasks whose rows may come from more than one source (the suite, the files, each recipe); any other task
    # name found in two sources of one split is refused, so same-named tasks are never pooled by accident
    merge_tasks: list[str] = field(default_factory=list)
    # 0: batches as drawn; n >= 1: the draws of n steps pooled and re-cut by length (data.length_grouping)
    group_by_length: int = 0

    @classmethod
    def from_dict(cls, raw: Any, key: str = "mta.data") -> "DataConfig":
        reject_unknown_keys(raw, [f.name for f in dataclasses.fields(cls)], key)
        values = dict(raw)
        if "sampling" in values:
            values["sampling"] = SamplingConfig.from_dict(values["sampling"], f"{key}.sampling")
        cfg = cls(**values)
        cfg.validate(key)
        return cfg

    def validate(self, key: str = "mta.data") -> None:
        if self.on_bad_rows not in ON_ERROR:
            raise ConfigError(f"{key}.on_bad_rows: must be one of {list(ON_ERROR)}, got {self.on_bad_rows!r}")
        for name in ("max_input_length", "max_target_length", "seed", "group_by_length"):
            check_int(getattr(self, name), f"{key}.{name}", 4 if name.startswith("max_") else 0)
        self._validate_suite(key)
        self._validate_files(key)
        self._validate_recipes(key)
        if self.suite is None and not self.files.get("train") and not self.recipes:
            raise ConfigError(f"{key}: no training data; set suite, files.train or recipes")
        if self.curriculum is not None and not isinstance(self.curriculum, list):
            raise ConfigError(f"{key}.curriculum: must be a list of phases or null")
        self.sampling.validate(f"{key}.sampling")
        if not isinstance(self.task_kinds, Mapping):
            raise ConfigError(f"{key}.task_kinds: must be an object {{task: kind}}, got {self.task_kinds!r}")
        if not isinstance(self.type_overrides, Mapping) or \
                not all(isinstance(v, str) and v for v in self.type_overrides.values()):
            raise ConfigError(f"{key}.type_overrides: must be an object {{task: task type}}, "
                              f"got {self.type_overrides!r}")
        if self.tasks is not None and (not isinstance(self.tasks, list) or not self.tasks
                                       or not all(isinstance(t, str) and t for t in self.tasks)):
            raise ConfigError(f"{key}.tasks: must be a non-empty list of task names or null, got {self.tasks!r}")
        if not isinstance(self.merge_tasks, list) or not all(isinstance(t, str) and t for t in self.merge_tasks):
            raise ConfigError(f"{key}.merge_tasks: must be a list of task names, got {self.merge_tasks!r}")
        for task, kind in self.task_kinds.items():
            if kind not in TASK_KINDS:
                raise ConfigError(f"{key}.task_kinds.{task}: must be one of {list(TASK_KINDS)}, got {kind!r}")

    def _validate_suite(self, key: str) -> None:
        if self.suite is None:
            return
        if not isinstance(self.suite, Mapping):
            raise ConfigError(f"{key}.suite: must be an object or null, got {self.suite!r}")
        unknown = sorted(set(self.suite) - set(SUITE_KEYS))
        if unknown:
            raise ConfigError(f"{key}.suite.{unknown[0]}: unknown key; allowed keys are {list(SUITE_KEYS)}")
        name = self.suite.get("name", DEFAULT_SUITE)
        if name not in SUITES:
            raise ConfigError(f"{key}.suite.name: must be one of {list(SUITES)}, got {name!r}")
        for size in ("seed", "train", "validation", "test"):
            minimum = 0 if size == "seed" else 1
            check_int(self.suite.get(size, minimum), f"{key}.suite.{size}", minimum)
        tasks = self.suite.get("tasks")
        known = SUITES[name].tasks
        if tasks is not None:
            bad = [t for t in tasks if t not in known] if isinstance(tasks, list) else [tasks]
            if bad or not tasks:
                raise ConfigError(f"{key}.suite.tasks: unknown task {bad[0] if bad else None!r}; "
                                  f"the {name} suite has {list(known)}")

    def _validate_files(self, key: str) -> None:
        if not isinstance(self.files, Mapping):
            raise ConfigError(f"{key}.files: must be an object {{split: [paths]}}, got {self.files!r}")
        for split, paths in self.files.items():
            if split not in SPLIT_KEYS:
                raise ConfigError(f"{key}.files.{split}: unknown split; allowed: {list(SPLIT_KEYS)}")
            if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
                raise ConfigError(f"{key}.files.{split}: must be a list of file paths, got {paths!r}")

    def _validate_recipes(self, key: str) -> None:
        if not isinstance(self.recipes, list):
            raise ConfigError(f"{key}.recipes: must be a list, got {self.recipes!r}")
        for index, recipe in enumerate(self.recipes):
            where = f"{key}.recipes[{index}]"
            if not isinstance(recipe, Mapping):
                raise ConfigError(f"{where}: must be an object with keys {list(RECIPE_KEYS)}")
            unknown = sorted(set(recipe) - set(RECIPE_KEYS))
            if unknown:
                raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed keys are {list(RECIPE_KEYS)}")
            if recipe.get("name") not in RECIPES:
                raise ConfigError(f"{where}.name: must be one of {sorted(RECIPES)}, got {recipe.get('name')!r}")
            splits = recipe.get("splits", {})
            if not isinstance(splits, Mapping) or any(s not in SPLIT_KEYS for s in splits):
                raise ConfigError(f"{where}.splits: must map {list(SPLIT_KEYS)} to hub split names, got {splits!r}")
            files = recipe.get("data_files", {})
            if not isinstance(files, Mapping) or any(s not in SPLIT_KEYS for s in files):
                raise ConfigError(f"{where}.data_files: must map {list(SPLIT_KEYS)} to local files, got {files!r}")
            if recipe.get("limit") is not None:
                check_int(recipe["limit"], f"{where}.limit", 1)

    def suite_tasks(self) -> dict:
        """The tasks of the configured bundled suite (``{}`` without one): name -> SuiteTask."""
        return {} if self.suite is None else SUITES[self.suite.get("name", DEFAULT_SUITE)].tasks

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
