"""Build a bundled suite deterministically from a seed, write its splits, and render its data card."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ...files import write_text_atomically
from ...metrics import rouge_l
from .confirm import CONFIRM
from .spec import SuiteSpec, SuiteTask
from .tasks import BUNDLED

SPLITS = ("train", "validation", "test")
SUITES: dict[str, SuiteSpec] = {spec.name: spec for spec in (BUNDLED, CONFIRM)}
DEFAULT_SUITE = "bundled"
# the bundled suite's version (cached suites with another version are rebuilt)
SUITE_VERSION = BUNDLED.version


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


def suite_spec(name: str = DEFAULT_SUITE) -> SuiteSpec:
    """The bundled suite called ``name``; an unknown name is a ValueError listing the suites."""
    if name not in SUITES:
        raise ValueError(f"suite name: unknown {name!r}; the suites are {list(SUITES)}")
    return SUITES[name]


def task_names(tasks: Sequence[str] | None = None, suite: str = DEFAULT_SUITE) -> list[str]:
    known = suite_spec(suite).tasks
    names = list(known) if tasks is None else list(tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"suite tasks: unknown {unknown}; the {suite} suite has {list(known)}")
    return names


def build_suite(
    seed: int = 0, sizes: SuiteSizes = SuiteSizes(), tasks: Sequence[str] | None = None, suite: str = DEFAULT_SUITE
) -> dict[str, list[dict[str, str]]]:
    """``{split: rows}`` of the suite called ``suite``; each task's inputs are distinct across all splits. Same
    seed, same rows."""
    spec = suite_spec(suite)
    salt = "mta-suite" if suite == DEFAULT_SUITE else f"mta-suite-{suite}"
    out: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    for name in task_names(tasks, suite):
        rows = _unique_examples(
            spec.tasks[name], random.Random(f"{salt}:{seed}:{name}"), sizes.train + sizes.validation + sizes.test
        )
        start = 0
        for split in SPLITS:
            count = getattr(sizes, split)
            out[split] += rows[start : start + count]
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


def chance_levels(
    suite: dict[str, list[dict[str, str]]], name: str = DEFAULT_SUITE
) -> dict[str, dict[str, float | str]]:
    """Per task: the score of guessing. Uniform over the labels for closed label sets; otherwise the
    task's metric (exact match or ROUGE-L) of always answering the most frequent training target."""
    spec = suite_spec(name)
    levels = {}
    for task_name in dict.fromkeys(row["task"] for row in suite["test"]):
        task = spec.tasks[task_name]
        test = [r["target"] for r in suite["test"] if r["task"] == task_name]
        if task.labels is not None:
            levels[task_name] = {"chance": 1.0 / len(task.labels), "how": f"uniform over {len(task.labels)} labels"}
        else:
            train = Counter(r["target"] for r in suite["train"] if r["task"] == task_name)
            common = train.most_common(1)[0][0]
            score = (lambda t: rouge_l(common, t)) if task.metric == "rouge_l" else (lambda t: float(t == common))
            levels[task_name] = {
                "chance": sum(score(t) for t in test) / len(test),
                "how": f"always answering the most frequent training target ({common!r})",
            }
    return levels


def write_suite(
    out_dir: str | Path,
    seed: int = 0,
    sizes: SuiteSizes = SuiteSizes(),
    tasks: Sequence[str] | None = None,
    suite: str = DEFAULT_SUITE,
) -> dict[str, Path]:
    """Write ``train/validation/test.jsonl``, ``suite.json`` (manifest) and ``DATA.md``; returns the paths.

    Files are written to temporary names and renamed, so an interrupted run leaves no half-written split.
    """
    spec = suite_spec(suite)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = build_suite(seed, sizes, tasks, suite)
    levels = chance_levels(rows, suite)
    manifest = {
        "version": spec.version,
        "name": suite,
        "seed": seed,
        "sizes": {s: getattr(sizes, s) for s in SPLITS},
        "tasks": {
            n: {
                "type": spec.tasks[n].type,
                "metric": spec.tasks[n].metric,
                "labels": list(spec.tasks[n].labels or []),
                **levels[n],
            }
            for n in levels
        },
    }
    paths = {split: out_dir / f"{split}.jsonl" for split in SPLITS}
    for split, path in paths.items():
        write_text_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[split]))
    paths["manifest"] = out_dir / "suite.json"
    write_text_atomically(paths["manifest"], json.dumps(manifest, indent=2) + "\n")
    paths["card"] = out_dir / "DATA.md"
    write_text_atomically(paths["card"], render_card(rows, seed, sizes, suite))
    return paths


def render_card(rows: dict[str, list[dict[str, str]]], seed: int, sizes: SuiteSizes, suite: str = DEFAULT_SUITE) -> str:
    """The data card: what each task tests, which pairs conflict or help and why, chance levels."""
    spec = suite_spec(suite)
    levels = chance_levels(rows, suite)
    command = "python -m mta_moe.data.suite" + ("" if suite == DEFAULT_SUITE else f" --suite {suite}")
    lines = [
        f"# {spec.card_title}",
        "",
        f"Generated by `{command}` (this card: seed "
        f"{seed}, {sizes.train} / {sizes.validation} / {sizes.test} train / validation / test examples "
        "per task). Deterministic from the seed; no download. Inputs of one task never repeat across "
        "splits. Rows are in the canonical format (`input`, `target`, `task`, `type`).",
        "",
    ]
    lines += [*(p for intro in spec.card_intro for p in (intro, ""))]
    lines += ["| task | type | metric | labels | chance | what it tests |", "|---|---|---|---|---|---|"]
    for name, level in levels.items():
        task = spec.tasks[name]
        labels = ", ".join(task.labels) if task.labels else "free text"
        lines.append(
            f"| `{name}` | {task.type} | {task.metric} | {labels} | {level['chance']:.3f} | {task.description} |"
        )
    lines += [
        "",
        "Chance: " + "; ".join(sorted({str(v["how"]).split(" (")[0] for v in levels.values()})) + ".",
        "",
        "## Pairs that conflict",
        "",
    ]
    lines += [f"- `{a}` vs `{b}`: {why}." for a, b, why in spec.conflicts]
    lines += ["", spec.card_conflict_note, "", "## Pairs that help", ""]
    lines += [f"- `{a}` and `{b}`: {why}." for a, b, why in spec.helps]
    lines += ["", "## One example per task", ""]
    for name in levels:
        row = next(r for r in rows["train"] if r["task"] == name)
        lines.append(f"- `{name}`: {row['input']} → **{row['target']}**")
    lines += ["", "## Vocabulary", "", spec.card_vocabulary, ""]
    return "\n".join(lines)


def data_card() -> str:
    """DATA.md: the cards of every bundled suite at their defaults (seed 0, default sizes)."""
    return "\n".join(render_card(build_suite(suite=name), 0, SuiteSizes(), name) for name in SUITES)
