"""Hub datasets by name, converted to the canonical format by small recipes.

``load_recipe("sst2", split="train")`` calls ``datasets.load_dataset("nyu-mll/glue", "sst2")``; with
``data_files=`` the same conversion runs on local files with the hub's columns (JSONL, JSON, CSV or
Parquet), which is how recipes are used on machines without hub access.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # datasets (and pandas) load when data is read, not when a config is checked
    import datasets

from .formats import DataError, LoadReport, validate_row

Convert = Callable[[dict[str, Any]], tuple[str, str]]
LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Recipe:
    name: str
    hub_path: str
    hub_config: str | None
    columns: tuple[str, ...]
    task_type: str
    convert: Convert
    labels: tuple[str, ...] | None = None  # index -> label word, for integer label columns


def _label(recipe_labels: Sequence[str], value: Any, recipe: str) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, int) or not 0 <= value < len(recipe_labels):
        raise DataError(
            f"label {value!r} is not one of 0..{len(recipe_labels) - 1} "
            f"({', '.join(recipe_labels)}); unlabelled splits (label -1, e.g. GLUE test) "
            f"cannot be used for {recipe}"
        )
    return recipe_labels[value]


SENTIMENT = ("negative", "positive")
MNLI = ("entailment", "neutral", "contradiction")
BINARY_NLI = ("entailment", "not_entailment")

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "sst2",
            "nyu-mll/glue",
            "sst2",
            ("sentence", "label"),
            "classify",
            lambda x: (
                f"Is this sentence positive or negative? Sentence: {x['sentence'].strip()}",
                _label(SENTIMENT, x["label"], "sst2"),
            ),
            SENTIMENT,
        ),
        Recipe(
            "mnli",
            "nyu-mll/glue",
            "mnli",
            ("premise", "hypothesis", "label"),
            "nli",
            lambda x: (
                f"Premise: {x['premise']} Hypothesis: {x['hypothesis']} Entailment, neutral or contradiction?",
                _label(MNLI, x["label"], "mnli"),
            ),
            MNLI,
        ),
        Recipe(
            "qnli",
            "nyu-mll/glue",
            "qnli",
            ("question", "sentence", "label"),
            "nli",
            lambda x: (
                f"Question: {x['question']} Sentence: {x['sentence']} Does the sentence answer the question?",
                _label(BINARY_NLI, x["label"], "qnli"),
            ),
            BINARY_NLI,
        ),
        Recipe(
            "rte",
            "nyu-mll/glue",
            "rte",
            ("sentence1", "sentence2", "label"),
            "nli",
            lambda x: (
                f"Premise: {x['sentence1']} Hypothesis: {x['sentence2']} Entailment or not_entailment?",
                _label(BINARY_NLI, x["label"], "rte"),
            ),
            BINARY_NLI,
        ),
        Recipe(
            "boolq",
            "google/boolq",
            None,
            ("question", "answer", "passage"),
            "classify",
            lambda x: (
                f"Passage: {x['passage']} Question: {x['question']}? Yes or no?",
                _label(("no", "yes"), x["answer"], "boolq"),
            ),
        ),
        Recipe(
            "squad",
            "rajpurkar/squad",
            None,
            ("context", "question", "answers"),
            "generate",
            lambda x: (
                f"Answer from the text. Question: {x['question']} Text: {x['context']}",
                _first_answer(x["answers"]),
            ),
        ),
        Recipe(
            "xsum",
            "EdinburghNLP/xsum",
            None,
            ("document", "summary"),
            "generate",
            lambda x: (f"Summarize: {x['document']}", x["summary"]),
        ),
    ]
}


def _first_answer(answers: Any) -> str:
    texts = answers.get("text") if isinstance(answers, dict) else None
    if not texts:
        raise DataError("answers.text is empty; an extractive QA row needs at least one answer")
    return texts[0]


def load_recipe(
    name: str,
    split: str,
    task_types: Sequence[str],
    data_files: str | Sequence[str] | None = None,
    task_type: str | None = None,
    limit: int | None = None,
    cache_dir: str | None = None,
) -> tuple[datasets.Dataset, LoadReport]:
    """Canonical rows (input, target, task=name, type) of one recipe's split."""
    if name not in RECIPES:
        raise DataError(f"recipe {name!r}: unknown; available recipes: {sorted(RECIPES)}")
    recipe = RECIPES[name]
    kind = task_type or recipe.task_type
    source = _load_raw(recipe, split, data_files, cache_dir)
    missing = [c for c in recipe.columns if c not in source.column_names]
    if missing:
        raise DataError(
            f"recipe {name} ({_where(recipe, split, data_files)}): missing columns {missing}; "
            f"expected {list(recipe.columns)}, got {source.column_names}"
        )
    if limit is not None:
        source = source.select(range(min(limit, len(source))))
    columns: dict[str, list[str]] = {"input": [], "target": [], "task": [], "type": []}
    for number, raw in enumerate(source, start=1):
        try:
            text, target = recipe.convert(raw)
            row = validate_row({"input": text, "target": target, "task": name, "type": kind}, task_types)
        except DataError as exc:
            raise DataError(f"recipe {name} ({_where(recipe, split, data_files)}): row {number}: {exc}") from None
        for key in columns:
            columns[key].append(row[key])
    report = LoadReport(f"recipe {name} ({_where(recipe, split, data_files)})", rows=len(columns["input"]))
    import datasets

    return datasets.Dataset.from_dict(columns), report


def _where(recipe: Recipe, split: str, data_files: Any) -> str:
    if data_files is not None:
        return ", ".join(map(str, [data_files] if isinstance(data_files, (str, Path)) else data_files))
    return f"{recipe.hub_path}{'/' + recipe.hub_config if recipe.hub_config else ''} split {split}"


def _load_raw(recipe: Recipe, split: str, data_files: Any, cache_dir: str | None) -> datasets.Dataset:
    import datasets

    if data_files is not None:
        files = [str(data_files)] if isinstance(data_files, (str, Path)) else [str(f) for f in data_files]
        for file in files:
            if not Path(file).is_file():
                raise DataError(f"recipe {recipe.name}: data file not found: {file}")
        suffixes = {Path(f).suffix.lower() for f in files}
        if len(suffixes) != 1 or next(iter(suffixes)) not in LOCAL_BUILDERS:
            raise DataError(
                f"recipe {recipe.name}: data files must share one of {sorted(LOCAL_BUILDERS)}, got {sorted(suffixes)}"
            )
        builder = LOCAL_BUILDERS[suffixes.pop()]
        try:
            return datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache_dir)
        except Exception as exc:  # datasets wraps parse errors in several types
            raise DataError(f"recipe {recipe.name}: could not read {files}: {type(exc).__name__}: {exc}") from None
    try:
        return datasets.load_dataset(recipe.hub_path, recipe.hub_config, split=split, cache_dir=cache_dir)
    except Exception as exc:  # offline, unknown split, ...
        raise DataError(
            f"recipe {recipe.name}: could not load {_where(recipe, split, None)} from the hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); without hub "
            f"access pass data_files with the same columns {list(recipe.columns)}"
        ) from None
