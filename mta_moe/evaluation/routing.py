"""Routing per *task* (the gate itself only sees task types): run the model over labelled rows and
read each MTA layer's decision for every sequence; detect routing collapse."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import torch

from ..data import Collator

COLLAPSE_SHARE = 0.9  # one adapter takes this share of all routes: collapse


@dataclass
class TaskRouting:
    """One layer's routing over a dataset: rows are tasks (sorted names), columns adapters."""

    tasks: list[str]
    sequences: list[int]  # [T] sequences per task
    counts: list[list[int]]  # [T][E] sequences of the task that used the adapter
    mean_weights: list[list[float]]  # [T][E] mean gate weight per sequence (0 when unused)
    mean_mix: list[list[float]] | None  # [T][1+S] stage-2 mixing weights (task mixture, shared adapters)


@torch.no_grad()
def routing_by_task(
    model: torch.nn.Module,
    tokenized: datasets.Dataset,
    collate: Collator,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> dict[str, TaskRouting]:
    """Teacher-forced forwards over ``tokenized`` (rows of ``tokenize_examples``); per layer name."""
    tasks = sorted(set(tokenized["task"]))
    task_index = {t: i for i, t in enumerate(tasks)}
    sums: dict[str, dict[str, torch.Tensor]] = {}
    was_training = model.training
    model.eval()
    table = tokenized.to_list()  # plain rows, converted once
    for start in range(0, len(tokenized), batch_size):
        rows = table[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(rows).items()}
        model.forward_batch(batch)
        ids = torch.tensor([task_index[r["task"]] for r in rows])
        for name, layer in model.mta_layers.items():
            decision = layer.last_routing
            dense = decision.selection.dense_weights().double().cpu()
            acc = sums.setdefault(
                name,
                {
                    "n": torch.zeros(len(tasks), dtype=torch.float64),
                    "counts": torch.zeros(len(tasks), dense.size(1), dtype=torch.float64),
                    "weights": torch.zeros(len(tasks), dense.size(1), dtype=torch.float64),
                },
            )
            acc["n"].index_add_(0, ids, torch.ones(len(rows), dtype=torch.float64))
            acc["counts"].index_add_(0, ids, (dense > 0).double())
            acc["weights"].index_add_(0, ids, dense)
            if decision.mix_weights is not None:
                mix = decision.mix_weights.double().cpu()
                acc.setdefault("mix", torch.zeros(len(tasks), mix.size(1), dtype=torch.float64)).index_add_(0, ids, mix)
    model.train(was_training)
    out = {}
    for name, acc in sums.items():
        n = acc["n"].clamp(min=1).unsqueeze(1)
        out[name] = TaskRouting(
            tasks,
            [int(v) for v in acc["n"]],
            acc["counts"].long().tolist(),
            (acc["weights"] / n).tolist(),
            (acc["mix"] / n).tolist() if "mix" in acc else None,
        )
    return out


def collapse_warnings(
    layer: str, counts: list[list[float]], sequences: list[float], share: float = COLLAPSE_SHARE
) -> list[str]:
    """Routing collapse in one layer's [rows][adapters] sequence counts: while a sequence picks fewer
    adapters than exist, one adapter serves at least ``share`` of all sequences, or an adapter is never used."""
    total = sum(sequences)
    if not counts or total == 0:
        return []
    totals = [sum(column) for column in zip(*counts)]
    picks = sum(totals) / total  # adapters per sequence (k)
    warnings = []
    if picks < len(totals) - 0.5:
        top = max(range(len(totals)), key=totals.__getitem__)
        if totals[top] / total >= share:
            warnings.append(f"{layer}: adapter {top} serves {totals[top] / total:.0%} of all sequences")
    unused = [e for e, value in enumerate(totals) if value == 0]
    if unused:
        warnings.append(f"{layer}: adapters {unused} are never used")
    return warnings
