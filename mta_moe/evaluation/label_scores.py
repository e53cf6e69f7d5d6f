"""Teacher-forced log-likelihood of every candidate label: the class logits of a generative model."""

from __future__ import annotations

from typing import Sequence

import datasets
import torch
import torch.nn.functional as F

from ..data import IGNORE_INDEX, Collator, TaskRegistry, tokenize_examples
from ..metrics import normalise
from .generation import head_logits


@torch.no_grad()
def label_logits(
    model: torch.nn.Module,
    tokenizer,
    registry: TaskRegistry,
    rows: datasets.Dataset,
    labels: Sequence[str],
    max_input_length: int,
    max_target_length: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[len(rows), len(labels)]: log P(label | input) summed over the label's tokens (end token included); for a
    model with task heads, the log-softmax of the row's head, its columns in the order of ``labels``."""
    if getattr(model, "task_heads", None) is not None:
        return _head_log_probs(model, tokenizer, registry, rows, labels, max_input_length, batch_size, device)
    mode = "seq2seq" if model.config.is_encoder_decoder else "causal"
    pairs = [
        {"input": row["input"], "target": label, "type": row["type"], "task": row["task"]}
        for row in rows
        for label in labels
    ]
    if not pairs:
        return torch.zeros(0, len(labels))
    tokenized, _ = tokenize_examples(
        datasets.Dataset.from_list(pairs), tokenizer, registry, max_input_length, max_target_length, mode
    )
    collate = Collator(tokenizer.pad_token_id, mode, "right" if mode == "seq2seq" else "left")
    was_training = model.training
    model.eval()
    scores = []
    table = tokenized.to_list()  # plain rows, converted once
    for start in range(0, len(tokenized), batch_size):
        batch = collate(table[start : start + batch_size])
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model.forward_batch(batch)
        logits, target = out.logits.float(), batch["labels"]
        if mode == "causal":
            logits, target = logits[:, :-1], target[:, 1:]
        token_ll = -F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
        scores.append((token_ll * (target != IGNORE_INDEX)).sum(1).cpu())
    model.train(was_training)
    return torch.cat(scores).view(len(rows), len(labels))


@torch.no_grad()
def _head_log_probs(model, tokenizer, registry, rows, labels, max_input_length, batch_size, device) -> torch.Tensor:
    heads = model.task_heads.labels
    tokenized, _ = tokenize_examples(rows, tokenizer, registry, max_input_length, 2, "classify", heads)
    collate = Collator(tokenizer.pad_token_id, "classify", "right")
    was_training = model.training
    model.eval()
    parts = []
    table = tokenized.to_list()
    for start in range(0, len(table), batch_size):
        batch = collate(table[start : start + batch_size])
        logits = head_logits(model, batch, device).float()
        log_probs = F.log_softmax(logits, dim=-1).cpu()
        for row, task_id in zip(log_probs, batch["task_ids"].tolist()):
            own = {normalise(name): i for i, name in enumerate(heads[registry.names[task_id]])}
            parts.append(torch.stack([row[own[normalise(label)]] for label in labels]))
    model.train(was_training)
    return torch.stack(parts) if parts else torch.zeros(0, len(labels))
