"""Validation during training: greedy generation per example, per-task accuracy / exact match.

Predictions and targets are compared after normalisation: surrounding whitespace stripped, inner
whitespace collapsed to one space, lower-cased. Classification and NLI labels are single words, so
exact match of the normalised label is accuracy.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any, Callable

import datasets
import torch
import torch.distributed as dist
from transformers import PreTrainedTokenizerBase

from ..data import IGNORE_INDEX, Collator


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@torch.no_grad()
def evaluate_generation(model: torch.nn.Module, dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase,
                        collate: Collator, batch_size: int, max_new_tokens: int, lockstep: bool,
                        device: torch.device, prompt_only: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                        predictions: list[str] | None = None) -> dict[str, float]:
    """Per-task exact match of normalised greedy generations, plus ``macro`` (mean over tasks).

    ``predictions``: a list to fill with every example's generated text, in dataset order (gathered
    from all ranks).

    Each rank scores its share of ``dataset``; counts are summed over ranks. ``lockstep`` (expert
    parallelism): every rank runs the same number of batches and decoding steps, because the MoE
    all-to-all needs every rank in every forward.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    indices = list(range(rank, len(dataset), world))
    batches = math.ceil(len(dataset) / world / batch_size)
    mine: dict[int, str] = {}
    correct: dict[str, float] = defaultdict(float)
    total: dict[str, float] = defaultdict(float)
    was_training = model.training
    model.eval()
    for b in range(batches if lockstep else math.ceil(len(indices) / batch_size)):
        chunk = indices[b * batch_size:(b + 1) * batch_size]
        real = len(chunk)
        if not chunk:  # lockstep: this rank has run out, decode a stand-in and ignore it
            chunk = [0]
        rows = [dataset[i] for i in chunk]
        feats = [prompt_only(r) if prompt_only else r for r in rows]
        batch = collate(feats)
        # lockstep: ranks that finish early keep running forwards until every rank is done (synced_gpus)
        out = model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                             task_type_ids=batch["task_type_ids"].to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, synced_gpus=lockstep)
        if not model.config.is_encoder_decoder:
            out = out[:, batch["input_ids"].shape[1]:]
        texts = tokenizer.batch_decode(out, skip_special_tokens=True)
        for index, row, text in list(zip(chunk, rows, texts))[:real]:
            mine[index] = text
            total[row["task"]] += 1
            correct[row["task"]] += float(normalise(text) == normalise(row["target"]))
    model.train(was_training)
    tasks = sorted(set(dataset["task"]))
    counts = torch.tensor([[correct[t], total[t]] for t in tasks], dtype=torch.float64)
    if dist.is_initialized() and world > 1:
        dist.all_reduce(counts)
    scores = {t: float(c / n) if n else float("nan") for t, (c, n) in zip(tasks, counts.tolist())}
    scores["macro"] = sum(scores[t] for t in tasks) / len(tasks)
    if predictions is not None:
        parts = [mine]
        if dist.is_initialized() and world > 1:
            parts = [None] * world
            dist.all_gather_object(parts, mine)
        merged = {i: text for part in parts for i, text in part.items()}
        predictions[:] = [merged[i] for i in range(len(dataset))]
    return scores


def causal_prompt(row: dict[str, Any]) -> dict[str, Any]:
    """A tokenised causal-LM row cut to its prompt (the part whose labels are masked)."""
    keep = sum(1 for label in row["labels"] if label == IGNORE_INDEX)
    return {**row, "input_ids": row["input_ids"][:keep], "labels": row["labels"][:keep]}
