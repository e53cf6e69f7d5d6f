"""The ``mta.data`` section: where the examples come from, how long they may be, how tasks are mixed."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, Mapping

from pydantic import Field, field_validator, with_config
from typing_extensions import Required, TypedDict

from ..config import ConfigError
from ..metrics import KINDS as TASK_KINDS
from ..typed_config import SECTION, build_section, check_section, setting, typed_section
from .curriculum import PhaseSpec
from .formats import ON_ERROR
from .recipes import RECIPES
from .sampling import SamplingConfig
from .suite import DEFAULT_SUITE, SUITES

SPLIT_KEYS = ("train", "validation", "test")
RECIPE_NAMES = tuple(sorted(RECIPES))
SUITE_NAMES = tuple(SUITES)
_Name = Annotated[str, Field(min_length=1)]
_Split = Literal[SPLIT_KEYS]  # type: ignore[valid-type]


@with_config(SECTION)
class SuiteChoice(TypedDict, total=False):
    """``mta.data.suite``: which bundled suite, generated with which seed and sizes per task."""

    name: Annotated[Literal[SUITE_NAMES], Field(description="the suite")]  # type: ignore[valid-type]
    seed: Annotated[int, Field(ge=0, description="the generation seed")]
    train: Annotated[int, Field(ge=1, description="training rows per task")]
    validation: Annotated[int, Field(ge=1, description="validation rows per task")]
    test: Annotated[int, Field(ge=1, description="test rows per task")]
    tasks: Annotated[list[_Name] | None, Field(min_length=1, description="keep only these tasks of the suite")]


@with_config(SECTION)
class RecipeChoice(TypedDict, total=False):
    """One entry of ``mta.data.recipes``: a hub dataset by name (``data_files`` for local copies)."""

    name: Required[Annotated[Literal[RECIPE_NAMES], Field(description="the recipe")]]  # type: ignore[valid-type]
    splits: Annotated[dict[_Split, _Name], Field(description="our split -> the hub's split name")]
    data_files: Annotated[dict[_Split, Any], Field(description="our split -> local file(s) with the hub's columns")]
    type: Annotated[_Name, Field(description="the task type (replaces the recipe's own)")]
    limit: Annotated[int | None, Field(ge=1, description="keep the first n rows of each split")]


@typed_section("mta.data")
class DataConfig:
    """Where the examples come from, how long they may be, how tasks are mixed (``docs/data.md`` is generated from
    the fields)."""

    suite: SuiteChoice | None = setting(
        {"name": DEFAULT_SUITE, "seed": 0, "train": 1000, "validation": 100, "test": 200, "tasks": None},
        "a bundled suite (`name`: `bundled`, where settings are chosen, or `confirm`, where they are confirmed; "
        "sizes per task; DATA.md); `null`: none",
        must="an object or null",
    )
    files: dict[_Split, list[_Name]] = setting(
        {},
        '`{"train" | "validation" | "test": [paths]}` in the canonical format',
        must="an object {split: [paths]}",
        item_must="a list of file paths",
        key_name="split",
    )
    recipes: list[RecipeChoice] = setting(
        [],
        'hub datasets by name: `[{"name": "mnli", "splits": {"validation": "validation_matched"}, '
        '"data_files": {...}, "type": "nli", "limit": 5000}]`',
        must="a list of recipe objects",
    )
    on_bad_rows: Literal[ON_ERROR] = setting("raise", "what a malformed row does: `raise` or `skip`")  # type: ignore
    max_input_length: int = setting(128, "input length in tokens, special tokens included", ge=4)
    max_target_length: int = setting(32, "target length in tokens, special tokens included", ge=4)
    seed: int = setting(0, "sampler seed", ge=0)
    sampling: SamplingConfig = setting(SamplingConfig(), "task mixing (*Task mixing*)")
    curriculum: list[PhaseSpec] | None = setting(
        None,
        'a list of phases `{"start_step", "tasks", "weights"}` (*Curriculum*)',
        min_length=1,
        must="a non-empty list of phases or null",
    )
    task_kinds: dict[str, Literal[TASK_KINDS]] = setting(  # type: ignore[valid-type]
        {},
        '`{task: "classification" | "extraction" | "generation"}`: how a task is scored (default: '
        "inferred, see *Evaluation*)",
        must="an object {task: kind}",
    )
    type_overrides: dict[str, _Name] = setting(
        {}, "`{task: task type}`: replaces the type the data gives a task", must="an object {task: task type}"
    )
    tasks: list[_Name] | None = setting(
        None,
        "keep only these tasks of every source (`null`: all)",
        min_length=1,
        must="a non-empty list of task names or null",
    )
    merge_tasks: list[_Name] = setting(
        [],
        "tasks whose rows may come from more than one source (the suite, the files, each recipe); any other "
        "task name found in two sources of one split stops the run, so same-named tasks are never pooled by "
        "accident",
        must="a list of task names",
    )
    group_by_length: int = setting(
        0,
        "0: batches as the mixture draws them; n ≥ 1: the draws of n consecutive steps are pooled, ordered by "
        "(input, target) token count and cut back into n batches, handed out in a seeded random order "
        "(*Length-grouped batches*)",
        ge=0,
    )

    @field_validator("sampling", mode="before")
    @classmethod
    def _sampling_from_mapping(cls, value: Any) -> Any:
        return build_section(SamplingConfig, value) if isinstance(value, Mapping) else value

    def __post_init__(self) -> None:
        """The checks between fields and against the bundled suites."""
        if self.suite is not None:
            name = self.suite.get("name", DEFAULT_SUITE)
            known = SUITES[name].tasks
            bad = [t for t in self.suite.get("tasks") or [] if t not in known]
            if bad:
                raise ConfigError(f"mta.data.suite.tasks: unknown task {bad[0]!r}; the {name} suite has {list(known)}")
        if self.suite is None and not self.files.get("train") and not self.recipes:
            raise ConfigError("mta.data: no training data; set suite, files.train or recipes")

    @classmethod
    def from_dict(cls, raw: Any, key: str = "mta.data") -> "DataConfig":
        """Build from a config file's ``mta.data`` mapping; a ConfigError names the first bad key."""
        return build_section(cls, raw, key)

    def validate(self) -> None:
        """Check the fields again (after some were set by hand)."""
        check_section(self)

    def suite_tasks(self) -> dict:
        """The tasks of the configured bundled suite (``{}`` without one): name -> SuiteTask."""
        return {} if self.suite is None else SUITES[self.suite.get("name", DEFAULT_SUITE)].tasks

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
