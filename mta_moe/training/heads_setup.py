"""What a run on an encoder backbone (``bert``, ``roberta``) adds to its setup: each task's kind and labels read
from the training rows, one classification head per task (``mta.task_heads``, filled from them), and the refusals of
what such a run cannot train (a task that is not classification, a task without a head)."""

from __future__ import annotations

from typing import Any

from ..config import ConfigError, MTAConfig
from ..data.config import DataConfig
from ..metrics import normalise, profile_tasks


def task_profiles(config: DataConfig, data: Any) -> dict[str, dict[str, Any]]:
    """Per task of the training split: ``kind`` (``mta.data.task_kinds``, the suite's, else inferred) and, for
    classification, its labels."""
    train, suite = data.splits["train"], config.suite_tasks()
    declared = {name: suite[name].kind for name in data.registry.names if name in suite}
    return profile_tasks(
        list(train["task"]), list(train["input"]), list(train["target"]), {**declared, **config.task_kinds}
    )


def with_task_heads(
    mta: MTAConfig, mode: str, model_type: str, profiles: dict[str, dict[str, Any]], order: list[str]
) -> MTAConfig:
    """The stage-1 layer config with one head per task of the data (``classify`` mode), in ``order`` (the tasks'
    id order); heads set in the config are kept and checked against the data. Text-to-text backbones take no
    heads."""
    if mode != "classify":
        if mta.task_heads is not None:
            raise ConfigError(
                f"mta.task_heads: task heads are for encoder backbones (bert, roberta); {model_type} generates its "
                "answers (remove the key)"
            )
        return mta
    refuse_unclassifiable(profiles, model_type)
    if mta.task_heads is None:
        return mta.replace(task_heads={task: list(profiles[task]["labels"]) for task in order})
    check_heads_cover(mta.task_heads, profiles, "mta.task_heads")
    return mta


def refuse_unclassifiable(profiles: dict[str, dict[str, Any]], model_type: str) -> None:
    """An encoder trains classification tasks only: refuse, naming them and their kinds, the tasks that are not."""
    refused = {task: p["kind"] for task, p in profiles.items() if p["kind"] != "classification"}
    if refused:
        listed = ", ".join(f"{task} ({kind})" for task, kind in sorted(refused.items()))
        raise ConfigError(
            f"mta.model: {model_type} is an encoder: it trains classification tasks, one head per task; {listed} "
            "cannot be trained on it (leave them out with mta.data.tasks, or use a text-to-text backbone)"
        )


def check_heads_cover(heads: dict[str, list[str]], profiles: dict[str, dict[str, Any]], where: str) -> None:
    """Every task of the data has a head, and every label of its training rows is one of the head's."""
    headless = sorted(set(profiles) - set(heads))
    if headless:
        raise ConfigError(f"{where}: tasks {headless} of the data have no head (heads: {sorted(heads)})")
    for task, profile in sorted(profiles.items()):
        known = {normalise(label) for label in heads[task]}
        unknown = sorted(label for label in profile["labels"] or [] if normalise(label) not in known)
        if unknown:
            raise ConfigError(f"{where}.{task}: training labels {unknown} are not in its head {heads[task]}")
