"""From an ``mta.data`` section to per-split datasets, a task registry, and load reports."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import datasets

from ..typed_config import check_known_tasks
from .config import SPLIT_KEYS, DataConfig
from .curriculum import Curriculum
from .formats import DataError, LoadReport, load_examples
from .length_grouping import LengthGroupedSampler
from .recipes import load_recipe
from .registry import TaskRegistry
from .sampling import MixtureSampler
from .suite import DEFAULT_SUITE, SuiteSizes, suite_spec, write_suite

DEFAULT_RECIPE_SPLITS = {"train": "train", "validation": "validation", "test": "test"}


@dataclass
class TaskData:
    """The loaded splits (canonical columns), the task registry built from the training split, and reports."""

    splits: dict[str, datasets.Dataset]
    registry: TaskRegistry
    reports: list[LoadReport] = field(default_factory=list)

    def task_indices(self, split: str = "train") -> dict[str, list[int]]:
        """Row indices of each task in ``split``, in row order (the sampler draws within these)."""
        out: dict[str, list[int]] = {name: [] for name in self.registry.names}
        for index, task in enumerate(self.splits[split]["task"]):
            out.setdefault(task, []).append(index)
        return {name: rows for name, rows in out.items() if rows}


@dataclass
class _Sources:
    """The datasets loaded so far per split, which source gave each task, and the load reports."""

    parts: dict[str, list[datasets.Dataset]] = field(default_factory=lambda: {split: [] for split in SPLIT_KEYS})
    sources: dict[str, dict[str, set[str]]] = field(default_factory=lambda: {split: {} for split in SPLIT_KEYS})
    reports: list[LoadReport] = field(default_factory=list)

    def add(self, split: str, dataset: datasets.Dataset, report: LoadReport, source: str, first: bool = False) -> None:
        self.parts[split].insert(0 if first else len(self.parts[split]), dataset)
        self.reports.insert(0 if first else len(self.reports), report)
        for task in set(dataset["task"]):
            self.sources[split].setdefault(task, set()).add(source)


def _load_files_and_recipes(config: DataConfig, task_types: Sequence[str], loaded: _Sources) -> None:
    for split, paths in config.files.items():
        for path in paths:
            loaded.add(split, *load_examples(path, task_types, config.on_bad_rows), "mta.data.files")
    for index, recipe in enumerate(config.recipes):
        splits = {**DEFAULT_RECIPE_SPLITS, **recipe.get("splits", {})}
        local = recipe.get("data_files", {})
        for split in local or splits:
            loaded.add(
                split,
                *load_recipe(
                    recipe["name"],
                    splits[split],
                    task_types,
                    data_files=local.get(split),
                    task_type=recipe.get("type"),
                    limit=recipe.get("limit"),
                ),
                f"mta.data.recipes[{index}] ({recipe['name']})",
            )


def check_task_settings(
    config: DataConfig, task_types: Sequence[str], check_names: Callable[[list[str]], None] | None = None
) -> list[str] | None:
    """The checks :func:`load_task_data` runs before it generates anything (the settings that name tasks, against
    the tasks of the training data), reading the data files but writing nothing; the task names. None: not
    checked, because a recipe reads from the hub (``mta-moe train`` checks them when it has loaded it)."""
    if any(not recipe.get("data_files") for recipe in config.recipes):
        return None
    loaded = _Sources()
    _load_files_and_recipes(config, task_types, loaded)
    names = _task_names(config, loaded.sources["train"])
    _check_names(config, names)
    if check_names is not None:
        check_names(names)
    return names


def load_task_data(
    config: DataConfig,
    task_types: Sequence[str],
    work_dir: str | Path,
    check_names: Callable[[list[str]], None] | None = None,
) -> TaskData:
    """Load every configured source: user files and recipes first, then ``check_names(task names)`` (checks
    that need only the config and the names, before anything is generated), then the bundled suite, generated
    into ``work_dir/suite`` (once per seed and sizes) and read back through the same strict reader."""
    loaded = _Sources()
    _load_files_and_recipes(config, task_types, loaded)
    parts, sources, reports = loaded.parts, loaded.sources, loaded.reports
    add = loaded.add
    names = _task_names(config, sources["train"])  # before anything is generated: the checks on names
    _check_names(config, names)
    if check_names is not None:
        check_names(names)
    if config.suite is not None:  # generated only now; its rows come first, as the suite is the first source
        suite_dir = _ensure_suite(config, Path(work_dir))
        for split in reversed(SPLIT_KEYS):
            add(
                split,
                *load_examples(suite_dir / f"{split}.jsonl", task_types, config.on_bad_rows),
                "the bundled suite",
                first=True,
            )
    _refuse_pooled_tasks(sources, config)
    if not parts["train"]:
        raise DataError("mta.data: no training split was loaded")
    splits = {split: datasets.concatenate_datasets(p) for split, p in parts.items() if p}
    if config.tasks is not None:  # every name has training rows (checked by _task_names)
        keep = set(config.tasks)
        splits = {
            split: ds.filter(lambda names: [n in keep for n in names], input_columns="task", batched=True)
            for split, ds in splits.items()
        }
    if config.type_overrides:
        overrides = dict(config.type_overrides)
        splits = {
            split: ds.map(lambda row: {"type": overrides.get(row["task"], row["type"])}) for split, ds in splits.items()
        }
    trained = set(splits["train"]["task"])
    for split, ds in splits.items():
        missing = sorted(set(ds["task"]) - trained)
        if missing:
            raise DataError(f"{split} data: tasks {missing} have no training rows")
    # every task of every split is a training task now; this also checks that each task has one type
    registry = TaskRegistry.from_rows(
        task_types, [(f"{split} data", ds["task"], ds["type"]) for split, ds in splits.items()]
    )
    reports += leak_reports(splits)
    return TaskData(splits, registry, reports)


def leak_reports(splits: dict[str, datasets.Dataset]) -> list[LoadReport]:
    """A report for each evaluation split whose rows repeat a training row's (task, input): their scores measure
    recall of the training data, not generalisation (kept: the data decides; the load summary says so)."""
    seen = set(zip(splits["train"]["task"], splits["train"]["input"]))
    out = []
    for split in ("validation", "test"):
        if split not in splits:
            continue
        repeats = [
            f"{task} row {i + 1} repeats a training input"
            for i, (task, text) in enumerate(zip(splits[split]["task"], splits[split]["input"]))
            if (task, text) in seen
        ]
        if repeats:
            out.append(LoadReport(f"{split} data (leak check)", len(splits[split]), duplicates=repeats))
    return out


def _task_names(config: DataConfig, loaded: Sequence[str]) -> list[str]:
    """The training tasks the config will give: the suite's (from its settings) and those ``loaded`` from
    files and recipes, kept to ``mta.data.tasks``."""
    names = set(loaded)
    if config.suite is not None:
        names |= set(config.suite.get("tasks") or config.suite_tasks())
    if config.tasks is None:
        return sorted(names)
    unknown = sorted(set(config.tasks) - names)
    if unknown:
        raise DataError(f"mta.data.tasks: {unknown[0]!r} has no training rows; tasks in the data: {sorted(names)}")
    return sorted(names & set(config.tasks))


def _check_names(config: DataConfig, names: Sequence[str]) -> None:
    """The data settings that name tasks name tasks of the data: curriculum, task kinds, sampling caps, type
    overrides."""
    if config.curriculum:
        Curriculum.from_list(config.curriculum, names)
    check_known_tasks(config.task_kinds, names, "mta.data.task_kinds")
    check_known_tasks(config.sampling.caps, names, "mta.data.sampling.caps")
    unknown = sorted(set(config.type_overrides) - set(names))
    if unknown:
        raise DataError(f"mta.data.type_overrides.{unknown[0]}: no such task in the training data")


def make_sampler(
    config: DataConfig,
    task_sizes: dict[str, int],
    length: Callable[[str, int], tuple] | None = None,
    total_steps: int | None = None,
) -> MixtureSampler | LengthGroupedSampler:
    """The training mixture of ``mta.data``: its sampling rates, seed and curriculum over these tasks' sizes;
    with ``group_by_length``, its batches re-cut by ``length(task, index)`` over windows that end with the run
    at ``total_steps``."""
    curriculum = Curriculum.from_list(config.curriculum, list(task_sizes)) if config.curriculum else None
    sampler = MixtureSampler(task_sizes, config.sampling, config.seed, curriculum)
    if not config.group_by_length:
        return sampler
    if length is None:
        raise ValueError("mta.data.group_by_length: the sampler needs the examples' lengths")
    return LengthGroupedSampler(sampler, length, config.group_by_length, total_steps)


def _refuse_pooled_tasks(sources: dict[str, dict[str, set[str]]], config: DataConfig) -> None:
    """A task name found in two sources of one split is an error unless ``mta.data.merge_tasks`` names it."""
    kept = None if config.tasks is None else set(config.tasks)
    for split, by_task in sources.items():
        for task, found in sorted(by_task.items()):
            if len(found) > 1 and task not in config.merge_tasks and (kept is None or task in kept):
                raise DataError(
                    f"mta.data: task {task!r} has {split} rows in {' and '.join(sorted(found))}; "
                    "rename one, drop a source (e.g. --data.suite null), or pool them on purpose "
                    f"with mta.data.merge_tasks: [{task!r}]"
                )


def _ensure_suite(config: DataConfig, work_dir: Path) -> Path:
    suite = {
        "name": DEFAULT_SUITE,
        "seed": 0,
        "train": 1000,
        "validation": 100,
        "test": 200,
        "tasks": None,
        **(config.suite or {}),
    }
    spec = suite_spec(suite["name"])
    sizes = SuiteSizes(suite["train"], suite["validation"], suite["test"])
    out = work_dir / "suite"
    manifest = out / "suite.json"
    wanted = {"version": spec.version, "seed": suite["seed"], "sizes": {s: getattr(sizes, s) for s in SPLIT_KEYS}}
    if manifest.is_file():
        have = json.loads(manifest.read_text())
        if (
            {k: have.get(k) for k in wanted} == wanted
            and have.get("name", DEFAULT_SUITE) == spec.name
            and list(have.get("tasks", {})) == list(suite["tasks"] or spec.tasks)
        ):
            return out
    write_suite(out, suite["seed"], sizes, suite["tasks"], spec.name)
    return out
