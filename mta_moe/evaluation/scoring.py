"""Standalone evaluation of an export: load it, generate for canonical-format data, score per task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import datasets
import torch

from ..data import load_examples, tokenize_examples
from ..metrics import PRIMARY, profile_tasks, row_scores, score_predictions
from .generation import causal_prompt, predict_texts
from .loading import LoadedExport, load_export
from .stock import is_stock_folder, load_stock_folder


def evaluate_rows(
    export: LoadedExport, rows: datasets.Dataset, batch_size: int, max_input_length: int, max_new_tokens: int
) -> dict[str, Any]:
    """Generate for ``rows`` (canonical columns) and score them; adds ``kinds``, ``predictions`` and ``row_scores``
    (each row's primary score, in row order)."""
    profiles = dict(export.profiles)
    missing = sorted(set(rows["task"]) - set(profiles))
    if missing:  # an export from before task profiles were recorded: infer them from these rows
        subset = rows.filter(lambda r: r["task"] in missing)
        profiles.update(profile_tasks(list(subset["task"]), list(subset["input"]), list(subset["target"])))
    tokenized, _ = tokenize_examples(
        rows, export.tokenizer, export.registry, max_input_length, max_new_tokens, export.mode, export.heads
    )
    predictions = predict_texts(
        export.model,
        tokenized,
        export.tokenizer,
        export.collator(),
        batch_size,
        max_new_tokens,
        lockstep=False,
        device=export.device,
        prompt_only=causal_prompt if export.mode == "causal" else None,
    )
    tasks = sorted(set(rows["task"]))
    result = score_predictions(
        list(rows["task"]),
        list(rows["target"]),
        predictions,
        {t: profiles[t]["kind"] for t in tasks},
        export.registry.type_of,
        {t: profiles[t]["labels"] for t in tasks},
    )
    result["kinds"] = {t: profiles[t]["kind"] for t in tasks}
    result["predictions"] = predictions
    result["row_scores"] = [
        row_scores(result["kinds"][task], [p], [g])[0] for task, g, p in zip(rows["task"], rows["target"], predictions)
    ]
    return result


def evaluate_export(
    model_dir: str | Path,
    data_path: str | Path,
    batch_size: int = 64,
    max_input_length: int = 128,
    max_new_tokens: int = 32,
    predictions_path: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Score an MTA export on every row of ``data_path``, or a per-task stock folder (``mta-moe export``) on the
    rows of its task."""
    if is_stock_folder(model_dir):  # a per-task folder of `mta-moe export`: its task's rows only
        rows, _ = load_examples(data_path, None)
        export, rows = load_stock_folder(model_dir, rows, str(data_path), device)
    else:
        export = load_export(model_dir, device)
        rows, _ = load_examples(data_path, export.registry.task_types)
        export.registry.check_known(str(data_path), rows["task"])
    result = evaluate_rows(export, rows, batch_size, max_input_length, max_new_tokens)
    if predictions_path:
        Path(predictions_path).write_text(
            "".join(
                json.dumps({"task": row["task"], "input": row["input"], "target": row["target"], "prediction": text})
                + "\n"
                for row, text in zip(rows, result["predictions"])
            )
        )
    return result


def load_chance(manifest: str | Path) -> dict[str, float]:
    """Chance level per task from the bundled suite's manifest (suite.json)."""
    return {task: v["chance"] for task, v in json.loads(Path(manifest).read_text())["tasks"].items()}


def format_table(result: Mapping[str, Any], chance: Mapping[str, float] | None = None) -> str:
    """One line per task: kind, primary metric name and value, chance level, the other metrics."""
    chance = chance or {}
    lines = [f"{'task':<16}{'kind':<16}{'metric':<13}{'score':>7}{'chance':>8}  other"]
    for task, metrics in result["tasks"].items():
        kind = result["kinds"][task]
        name = PRIMARY[kind]
        level = f"{chance[task]:.3f}" if task in chance else ""
        other = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k not in (name, "primary"))
        lines.append(f"{task:<16}{kind:<16}{name:<13}{metrics['primary']:>7.3f}{level:>8}  {other}")
    lines.append(f"{'macro':<45}{result['macro']:>7.3f}")
    return "\n".join(lines)
