"""The model card (README.md) written into every export: tasks, routing table, scores, how to load and serve."""
from __future__ import annotations

from typing import Any, Mapping

from ..modeling.inject import MTAModel
from .fold import MergeError, check_foldable, route_of


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


def model_card(model: MTAModel, tasks: Mapping[str, str], profiles: Mapping[str, Mapping[str, Any]],
               scores: Mapping[str, float] | None = None, step: int | None = None) -> str:
    """The card's markdown. ``tasks``: task -> task type; ``scores``: validation scores per task (+ macro)."""
    cfg = model.mta_config
    total = sum(p.numel() for p in model.parameters())
    lines = ["---", "library_name: mta_moe", "tags: [mixture-of-task-adapters, multi-task, deepspeed-moe]", "---",
             f"# MTA model: {type(model.base_model).__name__} with {cfg.num_experts} task adapters per layer", "",
             f"Stage {model.stage}{'' if step is None else f', step {step}'}; {total:,} parameters; "
             f"{len(model.mta_layers)} MTA layers ({', '.join(model.mta_layers)}); expert kind `{cfg.expert_kind}` "
             f"(adapter dim {cfg.adapter_dim}, {cfg.adapter_activation}); routed by **{cfg.route_by}**, "
             f"gate mode `{cfg.gate_mode}`, k = {cfg.top_k}, T = {cfg.temperature}.", "",
             "## Tasks", "", "| task | type | kind | validation score |", "|---|---|---|---|"]
    for task in sorted(tasks):
        kind = profiles.get(task, {}).get("kind", "")
        score = "" if not scores or task not in scores else f"{scores[task]:.3f}"
        lines.append(f"| {task} | {tasks[task]} | {kind} | {score} |")
    if scores and "macro" in scores:
        lines.append(f"| **macro** | | | {scores['macro']:.3f} |")
    table = routing_table(model)
    lines += ["", "## Routing", ""]
    lines += table if table is not None else ["The gate reads each input: the adapters depend on the sequence."]
    lines += ["", "## Use", "", "```python", "from mta_moe import MTAModel",
              "model = MTAModel.from_pretrained(this_directory)",
              f"out = model.generate(**inputs, {'task_ids' if cfg.route_by == 'task' else 'task_type_ids'}=ids)",
              "```", ""]
    try:
        check_foldable(model, check_ranks=False)  # the export itself holds every adapter
        lines.append("One stock Hugging Face model per task (no mta_moe needed to serve it): "
                     f"`mta-moe export --model this_directory --{cfg.route_by} NAME --out DIR`.")
    except MergeError as exc:
        lines.append(f"No exact per-task stock export: {exc}.")
    return "\n".join(lines) + "\n"
