"""Predictions over a dataset, sharded over data-parallel ranks (the texts that metrics score): greedy generation,
or the label a task head picks."""

from __future__ import annotations

import math
from typing import Any, Callable

import datasets
import torch
import torch.distributed as dist
from transformers import PreTrainedTokenizerBase

from ..data import IGNORE_INDEX, Collator


def predict_texts(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    collate: Collator,
    batch_size: int,
    max_new_tokens: int,
    lockstep: bool,
    device: torch.device,
    prompt_only: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[str]:
    """What the metrics score, per example in dataset order on every rank: the label a model with task heads picks
    (the arg-max of its task's head), otherwise the greedy generation."""
    if getattr(model, "task_heads", None) is not None:
        return sharded_predictions(
            model, dataset, collate, batch_size, lockstep, lambda batch: _classify(model, batch, device)
        )
    return generate_predictions(
        model, dataset, tokenizer, collate, batch_size, max_new_tokens, lockstep, device, prompt_only
    )


@torch.no_grad()
def generate_predictions(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    collate: Collator,
    batch_size: int,
    max_new_tokens: int,
    lockstep: bool,
    device: torch.device,
    prompt_only: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[str]:
    """Every example's greedy generation, in dataset order, on every rank (see :func:`sharded_predictions`)."""

    def generate(batch: dict[str, torch.Tensor]) -> list[str]:
        # lockstep: ranks that finish early keep running forwards until every rank is done (synced_gpus)
        out = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            task_type_ids=batch["task_type_ids"].to(device),
            task_ids=batch["task_ids"].to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            synced_gpus=lockstep,
        )
        if not model.config.is_encoder_decoder:
            out = out[:, batch["input_ids"].shape[1] :]
        return tokenizer.batch_decode(out, skip_special_tokens=True)

    return sharded_predictions(model, dataset, collate, batch_size, lockstep, generate, prompt_only)


@torch.no_grad()
def sharded_predictions(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    collate: Collator,
    batch_size: int,
    lockstep: bool,
    predict: Callable[[dict[str, torch.Tensor]], list[str]],
    prompt_only: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[str]:
    """``predict(batch)`` over every example, in dataset order, on every rank (the model in eval mode).

    Each rank predicts its share of ``dataset`` (rows rank, rank + world, ...); the texts are gathered.
    ``lockstep`` (expert parallelism): every rank runs the same number of batches, because the MoE all-to-all
    needs every rank in every forward.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    indices = list(range(rank, len(dataset), world))
    batches = math.ceil(len(dataset) / world / batch_size)
    mine: dict[int, str] = {}
    table = dataset.to_list()  # plain rows, converted once (indexing a Dataset formats one row per call)
    was_training = model.training
    model.eval()
    for b in range(batches if lockstep else math.ceil(len(indices) / batch_size)):
        chunk = indices[b * batch_size : (b + 1) * batch_size]
        real = len(chunk)
        if not chunk:  # lockstep: this rank has run out, predict a stand-in and ignore it
            chunk = [0]
        rows = [table[i] for i in chunk]
        texts = predict(collate([prompt_only(r) if prompt_only else r for r in rows]))
        for index, text in list(zip(chunk, texts))[:real]:
            mine[index] = text
    model.train(was_training)
    parts = [mine]
    if dist.is_initialized() and world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, mine)
    merged = {i: text for part in parts for i, text in part.items()}
    return [merged[i] for i in range(len(dataset))]


def head_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """``[batch, max classes]``: each row scored by its task's head (a model with task heads)."""
    return model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        task_type_ids=batch["task_type_ids"].to(device),
        task_ids=batch["task_ids"].to(device),
    ).logits


def _classify(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> list[str]:
    """Each row's label: the arg-max of its task's head."""
    logits = head_logits(model, batch, device)
    return model.task_heads.label_names(batch["task_ids"], logits.argmax(dim=-1).cpu())


def causal_prompt(row: dict[str, Any]) -> dict[str, Any]:
    """A tokenised causal-LM row cut to its prompt (the part whose labels are masked)."""
    keep = sum(1 for label in row["labels"] if label == IGNORE_INDEX)
    return {**row, "input_ids": row["input_ids"][:keep], "labels": row["labels"][:keep]}
