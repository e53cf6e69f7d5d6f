"""The comparison's own copies of its evaluation data, and chance levels for any data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets

from ..evaluation.scoring import load_chance
from ..metrics import profile_tasks, score_task

CANONICAL = ("input", "target", "task", "type")


def write_split(rows: datasets.Dataset, path: Path) -> Path:
    """``rows`` (canonical columns) as JSONL at ``path``, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(
        "".join(json.dumps({k: row[k] for k in CANONICAL}, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
    )
    tmp.replace(path)
    return path


def chance_levels(
    train: datasets.Dataset, test: datasets.Dataset, kinds: dict[str, str] | None = None
) -> dict[str, float]:
    """Per test task: the primary score of always answering the task's most frequent training target
    (the majority class for classification)."""
    profiles = profile_tasks(list(train["task"]), list(train["input"]), list(train["target"]), kinds)
    common = {}
    for task, target in zip(train["task"], train["target"]):
        common.setdefault(task, Counter())[target] += 1
    out = {}
    for task in sorted(set(test["task"])):
        golds = [t for name, t in zip(test["task"], test["target"]) if name == task]
        guess = common[task].most_common(1)[0][0]
        profile = profiles[task]
        out[task] = score_task(profile["kind"], [guess] * len(golds), golds, profile["labels"])["primary"]
    return out


def chance_for(run_cfg, data, work_dir: Path) -> dict[str, float]:
    """Chance levels of the comparison's test data: the suite's own (uniform over labels for its closed label
    sets) for its tasks, the most frequent training target for every other task."""
    suite = {}
    manifest = work_dir / "suite" / "suite.json"
    if run_cfg.data.suite is not None and manifest.is_file():
        suite = load_chance(manifest)
    tasks = run_cfg.data.suite_tasks()
    declared = {name: tasks[name].kind for name in data.registry.names if name in suite and name in tasks}
    levels = chance_levels(data.splits["train"], data.splits["test"], {**declared, **run_cfg.data.task_kinds})
    return {task: suite.get(task, level) for task, level in levels.items()}
