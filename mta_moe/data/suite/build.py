"""Build the bundled suite deterministically from a seed, write its splits, and render its data card."""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ...files import write_text_atomically
from ...metrics import rouge_l
from .tasks import CONFLICTS, HELPS, SUITE_TASKS, SuiteTask

SPLITS = ("train", "validation", "test")
# Bump whenever a generator changes what it draws: cached suites with another version are rebuilt.
SUITE_VERSION = 3


@dataclass(frozen=True)
class SuiteSizes:
    """Examples per task in each split."""

    train: int = 1000
    validation: int = 100
    test: int = 200

    def __post_init__(self) -> None:
        for split in SPLITS:
            value = getattr(self, split)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"suite size {split}: must be an integer >= 1, got {value!r}")


def task_names(tasks: Sequence[str] | None = None) -> list[str]:
    names = list(SUITE_TASKS) if tasks is None else list(tasks)
    unknown = [n for n in names if n not in SUITE_TASKS]
    if unknown:
        raise ValueError(f"suite tasks: unknown {unknown}; the suite has {list(SUITE_TASKS)}")
    return names


def build_suite(seed: int = 0, sizes: SuiteSizes = SuiteSizes(),
                tasks: Sequence[str] | None = None) -> dict[str, list[dict[str, str]]]:
    """``{split: rows}``; each task's inputs are distinct across all splits. Same seed, same rows."""
    out: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    for name in task_names(tasks):
        task = SUITE_TASKS[name]
        rows = _unique_examples(task, random.Random(f"mta-suite:{seed}:{name}"),
                                sizes.train + sizes.validation + sizes.test)
        start = 0
        for split in SPLITS:
            count = getattr(sizes, split)
            out[split] += rows[start:start + count]
            start += count
    return out


def _unique_examples(task: SuiteTask, rng: random.Random, count: int) -> list[dict[str, str]]:
    seen: set[str] = set()
    rows = []
    for _ in range(count * 50):
        text, target = task.generate(rng)
        if text not in seen:
            seen.add(text)
            rows.append({"input": text, "target": target, "task": task.name, "type": task.type})
            if len(rows) == count:
                return rows
    raise ValueError(f"suite task {task.name}: could not draw {count} distinct examples; ask for fewer")


def chance_levels(suite: dict[str, list[dict[str, str]]]) -> dict[str, dict[str, float | str]]:
    """Per task: the score of guessing. Uniform over the labels for closed label sets; otherwise the
    task's metric (exact match or ROUGE-L) of always answering the most frequent training target."""
    levels = {}
    for name in dict.fromkeys(row["task"] for row in suite["test"]):
        task = SUITE_TASKS[name]
        test = [r["target"] for r in suite["test"] if r["task"] == name]
        if task.labels is not None:
            levels[name] = {"chance": 1.0 / len(task.labels), "how": f"uniform over {len(task.labels)} labels"}
        else:
            train = Counter(r["target"] for r in suite["train"] if r["task"] == name)
            common = train.most_common(1)[0][0]
            score = (lambda t: rouge_l(common, t)) if task.metric == "rouge_l" else (lambda t: float(t == common))
            levels[name] = {"chance": sum(score(t) for t in test) / len(test),
                            "how": f"always answering the most frequent training target ({common!r})"}
    return levels


def write_suite(out_dir: str | Path, seed: int = 0, sizes: SuiteSizes = SuiteSizes(),
                tasks: Sequence[str] | None = None) -> dict[str, Path]:
    """Write ``train/validation/test.jsonl``, ``suite.json`` (manifest) and ``DATA.md``; returns the paths.

    Files are written to temporary names and renamed, so an interrupted run leaves no half-written split.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suite = build_suite(seed, sizes, tasks)
    levels = chance_levels(suite)
    manifest = {"version": SUITE_VERSION, "seed": seed, "sizes": {s: getattr(sizes, s) for s in SPLITS},
                "tasks": {n: {"type": SUITE_TASKS[n].type, "metric": SUITE_TASKS[n].metric,
                              "labels": list(SUITE_TASKS[n].labels or []), **levels[n]} for n in levels}}
    paths = {split: out_dir / f"{split}.jsonl" for split in SPLITS}
    for split, path in paths.items():
        write_text_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in suite[split]))
    paths["manifest"] = out_dir / "suite.json"
    write_text_atomically(paths["manifest"], json.dumps(manifest, indent=2) + "\n")
    paths["card"] = out_dir / "DATA.md"
    write_text_atomically(paths["card"], render_card(suite, seed, sizes))
    return paths


def render_card(suite: dict[str, list[dict[str, str]]], seed: int, sizes: SuiteSizes) -> str:
    """The data card: what each task tests, which pairs conflict or help and why, chance levels."""
    levels = chance_levels(suite)
    lines = ["# The bundled task suite", "",
             "Generated by `python -m mta_moe.data.suite` (this card: seed "
             f"{seed}, {sizes.train} / {sizes.validation} / {sizes.test} train / validation / test examples "
             "per task). Deterministic from the seed; no download. Inputs of one task never repeat across "
             "splits. Rows are in the canonical format (`input`, `target`, `task`, `type`).", "",
             "| task | type | metric | labels | chance | what it tests |", "|---|---|---|---|---|---|"]
    for name, level in levels.items():
        task = SUITE_TASKS[name]
        labels = ", ".join(task.labels) if task.labels else "free text"
        lines.append(f"| `{name}` | {task.type} | {task.metric} | {labels} | {level['chance']:.3f} | "
                     f"{task.description} |")
    lines += ["", "Chance: " + "; ".join(sorted({str(v["how"]).split(" (")[0] for v in levels.values()})) + ".", "",
              "## Pairs that conflict", ""]
    lines += [f"- `{a}` vs `{b}`: {why}." for a, b, why in CONFLICTS]
    lines += ["", "A single shared model must tell each conflicting pair apart from the instruction alone. "
              "Under `gate_mode: task` the routing key is the task type, so the cross-type pair "
              "(`irony` / `review_claim`) starts on different adapters while the within-type pairs "
              "(`sentiment` / `irony`, `past_tense` / `negate`) share theirs; giving a task its own entry in "
              "`mta.task_types` (and its rows that `type`) separates those too.", "", "## Pairs that help", ""]
    lines += [f"- `{a}` and `{b}`: {why}." for a, b, why in HELPS]
    lines += ["", "## One example per task", ""]
    for name in levels:
        row = next(r for r in suite["train"] if r["task"] == name)
        lines.append(f"- `{name}`: {row['input']} → **{row['target']}**")
    lines += ["", "## Vocabulary", "",
              "Names, cities, weekdays and months, 40 verbs with their inflections, 58 objects, 32 object "
              "adjectives, 5 review domains with their aspects, 16 positive and 16 negative adjectives, "
              "10 intensifiers and 5 headline topics: about 550 distinct words "
              "(`mta_moe/data/suite/vocab.py`).", ""]
    return "\n".join(lines)
