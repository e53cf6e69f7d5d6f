"""The model card (README.md) written into every export: tasks, routing table, scores, how to load and serve."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..auto_registration import auto_class_for
from ..metrics import PRIMARY
from ..modeling.inject import MTAModel
from .classifier import check_classifier_foldable
from .fold import MergeError, check_foldable, route_of

TAGS = ["mixture-of-task-adapters", "multi-task", "deepspeed-moe"]
# the Hub's metric ids for each task kind's primary score
METRIC_IDS = {"accuracy": "accuracy", "exact_match": "exact_match", "rouge_l": "rougeL"}
PIPELINE_TAGS = {
    "AutoModelForSeq2SeqLM": "text2text-generation",
    "AutoModelForCausalLM": "text-generation",
    "AutoModelForSequenceClassification": "text-classification",
}


@dataclass
class CardSource:
    """Where the model came from, for the card's metadata: ``base_model`` (a hub id; None for a model trained from
    scratch or from a local directory), ``datasets`` (hub ids) and ``data`` (what the validation scores are on)."""

    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    data: str = "validation split"


def card_header(
    model_name: str,
    library: str,
    tags: list[str],
    source: CardSource,
    tasks: Mapping[str, Mapping[str, Any]],
    pipeline_tag: str | None = None,
) -> str:
    """The YAML front matter (``huggingface_hub.ModelCardData``): library, tags, base model, datasets and a
    model-index with each task's validation score (the task is the dataset config, so each is its own entry).
    ``tasks``: task -> {"kind", "score"} (score None: not listed)."""
    from huggingface_hub import EvalResult, ModelCardData

    results = [
        EvalResult(
            task_type=pipeline_tag or "text2text-generation",
            task_name=task,
            dataset_type="custom",
            dataset_name=source.data,
            dataset_config=task,
            dataset_split="validation",
            metric_type=METRIC_IDS[PRIMARY[info["kind"]]],
            metric_value=round(float(info["score"]), 4),
        )
        for task, info in sorted(tasks.items())
        if info.get("score") is not None and info.get("kind") in PRIMARY
    ]
    data = ModelCardData(
        library_name=library,
        tags=tags,
        base_model=source.base_model,
        datasets=source.datasets or None,
        pipeline_tag=pipeline_tag,
        model_name=model_name,
        eval_results=results or None,
    )
    return f"---\n{data.to_yaml()}\n---"


def routing_table(model: MTAModel) -> list[str] | None:
    """Markdown rows: each routing key's adapters (and weights when k > 1) in each MTA layer; None when the
    choice depends on the input (gate_mode 'learned' or 'both')."""
    cfg = model.mta_config
    if cfg.gate_mode != "task":
        return None
    layers = list(model.mta_layers)
    rows = [f"| {cfg.route_by} | " + " | ".join(layers) + " |", "|---|" + "---|" * len(layers)]
    for key_id, key in enumerate(cfg.routing_keys):
        cells = []
        for layer in model.mta_layers.values():
            ids, weights = route_of(layer, key_id)
            cells.append(", ".join(str(i) if len(ids) == 1 else f"{i} ({w:.2f})" for i, w in zip(ids, weights)))
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    return rows


def model_card(
    model: MTAModel,
    tasks: Mapping[str, str],
    profiles: Mapping[str, Mapping[str, Any]],
    scores: Mapping[str, float] | None = None,
    step: int | None = None,
    source: CardSource | None = None,
) -> str:
    """The card's markdown. ``tasks``: task -> task type; ``scores``: validation scores per task (+ macro)."""
    cfg = model.mta_config
    total = sum(p.numel() for p in model.parameters())
    indexed = {task: {"kind": profiles.get(task, {}).get("kind"), "score": (scores or {}).get(task)} for task in tasks}
    heads = model.task_heads is not None
    auto = "AutoModelForSequenceClassification" if heads else auto_class_for(model.base_model.config)
    header = card_header(
        f"mta-{model.base_model.config.model_type}",
        "mta_moe",
        [*TAGS, model.base_model.config.model_type],
        source or CardSource(),
        indexed,
        PIPELINE_TAGS.get(auto),
    )
    lines = [
        header,
        f"# MTA model: {type(model.base_model).__name__} with {cfg.num_experts} task adapters per layer",
        "",
        f"Stage {model.stage}{'' if step is None else f', step {step}'}; {total:,} parameters; "
        f"{len(model.mta_layers)} MTA layers ({', '.join(model.mta_layers)}); expert kind `{cfg.expert_kind}` "
        f"(adapter dim {cfg.adapter_dim}, {cfg.adapter_activation}); routed by **{cfg.route_by}**, "
        f"gate mode `{cfg.gate_mode}`, k = {cfg.top_k}, T = {cfg.temperature}.",
        "",
        "## Tasks",
        "",
        "| task | type | kind | validation score |",
        "|---|---|---|---|",
    ]
    for task in sorted(tasks):
        kind = profiles.get(task, {}).get("kind", "")
        score = "" if not scores or task not in scores else f"{scores[task]:.3f}"
        lines.append(f"| {task} | {tasks[task]} | {kind} | {score} |")
    if scores and "macro" in scores:
        lines.append(f"| **macro** | | | {scores['macro']:.3f} |")
    table = routing_table(model)
    lines += ["", "## Routing", ""]
    lines += table if table is not None else ["The gate reads each input: the adapters depend on the sequence."]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import mta_moe  # registers the mta_moe model type with the Auto classes",
        f"from transformers import {auto}, AutoTokenizer",
        f"model = {auto}.from_pretrained(this_directory)  # = mta_moe.MTAModel.from_pretrained(this_directory)",
        "tokenizer = AutoTokenizer.from_pretrained(this_directory)",
        (
            "out = model(**inputs, task_ids=ids).logits  # ids: positions in mta_config.json's task_heads"
            if cfg.route_by == "task"
            else "out = model(**inputs, task_ids=ids, task_type_ids=type_ids).logits  # heads; types route"
        )
        if heads
        else f"out = model.generate(**inputs, {'task_ids' if cfg.route_by == 'task' else 'task_type_ids'}=ids)",
        "```",
        "",
    ]
    try:
        check_foldable(model, check_ranks=False)  # the export itself holds every adapter
        if heads:
            check_classifier_foldable(model)
        lines.append(
            "One stock Hugging Face model per task (no mta_moe needed to serve it): "
            f"`mta-moe export --model this_directory --{'task' if heads else cfg.route_by} NAME --out DIR`."
        )
    except MergeError as exc:
        lines.append(f"No exact per-task stock export: {exc}.")
    return "\n".join(lines) + "\n"


def task_card(model: Any, record: Mapping[str, Any], source: str | Path | None) -> str:
    """The card of a per-task stock folder: what was folded from which export, its tasks' validation scores (from
    the source export's card), base model and datasets as the source card names them, and how to load it."""
    from huggingface_hub import ModelCard

    key, route_by = record["routing_key"], record["route_by"]
    meta = _source_metadata(source)
    tasks = meta["tasks"] if route_by == "type" else {key: key}
    indexed = {
        t: {"kind": meta["profiles"].get(t, {}).get("kind"), "score": meta["scores"].get(t)}
        for t, task_type in tasks.items()
        if (route_by == "task" or task_type == key) and record.get("task", t) == t
    }
    folded = f"{route_by} `{key}`"
    if record.get("task", key) != key:  # a classifier of one task routed by its type: named by the task
        key, folded = record["task"], f"type `{key}` under task `{record['task']}`'s head"
    auto = auto_class_for(model.config)
    card_source = CardSource(meta["base_model"], meta["datasets"], meta["data"])
    header = card_header(
        f"{key}",
        "transformers",
        ["mta_moe", "folded-task-adapters", key],
        card_source,
        indexed,
        PIPELINE_TAGS.get(auto),
    )
    lines = [
        header,
        f"# {key}: a stock {record['architecture']} folded from an MTA model",
        "",
        f"The adapters of {folded} folded into the FFN weights of "
        f"{'the MTA export ' + f'`{source}`' if source else 'an MTA export'} (FFN widths "
        f"{record['ffn_widths']}, {record['parameters']:,} parameters); it computes what the MTA model computes "
        f"for {key} (largest output difference at export {record['max_abs_output_difference']:.2g}). "
        f"No mta_moe is needed to load or serve it; `mta_merge.json` records each layer's adapters.",
        "",
        "## Use",
        "",
        "```python",
        f"from transformers import {auto}, AutoTokenizer",
        f"model = {auto}.from_pretrained(this_directory)",
        "tokenizer = AutoTokenizer.from_pretrained(this_directory)",
        "```",
        "",
    ]
    ModelCard("\n".join(lines))  # the front matter parses (raises otherwise)
    return "\n".join(lines)


def _source_metadata(source: str | Path | None) -> dict[str, Any]:
    """Tasks, profiles, scores, base model and datasets of the MTA export at ``source`` (empty when unknown)."""
    import json

    from huggingface_hub import ModelCard

    meta: dict[str, Any] = {
        "tasks": {},
        "profiles": {},
        "scores": {},
        "base_model": None,
        "datasets": [],
        "data": CardSource().data,
    }
    if source is None:
        return meta
    tasks = Path(source) / "tasks.json"
    if tasks.is_file():
        record = json.loads(tasks.read_text())
        meta["tasks"], meta["profiles"] = record.get("tasks", {}), record.get("profiles", {})
    card = Path(source) / "README.md"
    if card.is_file():
        data = ModelCard.load(card).data
        meta["scores"] = {r.task_name: r.metric_value for r in data.eval_results or [] if r.task_name}
        meta["base_model"], meta["datasets"] = data.base_model, list(data.datasets or [])
        meta["data"] = next((r.dataset_name for r in data.eval_results or []), meta["data"])
    return meta
