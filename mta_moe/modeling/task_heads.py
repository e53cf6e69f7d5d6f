"""One classification head per task on an encoder backbone (the MT-DNN setup): each sequence is pooled and scored
by the head of its own task. The heads are stacked into one weight so a batch that mixes tasks is one gather and
one batched product; classes beyond a task's label count are masked out of its logits."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import POOLINGS


def pool(last_hidden: Tensor, attention_mask: Tensor | None, pooling: str, pooler_output: Tensor | None) -> Tensor:
    """The sequence representation a head reads: the backbone's pooler output, the first token, or the mean over
    the real (unmasked) tokens."""
    if pooling == "pooler":
        if pooler_output is None:
            raise ValueError("pooling 'pooler': the backbone has no pooler layer (use pooling 'cls' or 'mean')")
        return pooler_output
    if pooling == "cls":
        return last_hidden[:, 0]
    if pooling == "mean":
        if attention_mask is None:
            return last_hidden.mean(dim=1)
        mask = attention_mask.to(last_hidden.dtype).unsqueeze(-1)
        return (last_hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    raise ValueError(f"pooling: must be one of {list(POOLINGS)}, got {pooling!r}")


class TaskHeads(nn.Module):
    """Per-task linear classifiers ``logits = W_t · dropout(pooled) + b_t`` over ``labels[t]``.

    Args:
        labels: each task's labels in head order (the task's position in this mapping is its task id).
        hidden_size: the width of the pooled representation.
        dropout: dropout on the pooled representation while training (BERT's ``hidden_dropout_prob``).
        init_std: std of the normal initialisation of the weights (BERT's ``initializer_range``); biases start at 0.
        seed: seed of that initialisation.
    """

    def __init__(
        self, labels: dict[str, list[str]], hidden_size: int, dropout: float, init_std: float, seed: int
    ) -> None:
        super().__init__()
        self.tasks = list(labels)
        self.labels = {task: list(names) for task, names in labels.items()}
        width = max(len(names) for names in labels.values())
        self.weight = nn.Parameter(
            torch.empty(len(labels), width, hidden_size).normal_(
                0.0, init_std, generator=torch.Generator().manual_seed(seed)
            )
        )
        self.bias = nn.Parameter(torch.zeros(len(labels), width))
        valid = torch.zeros(len(labels), width, dtype=torch.bool)
        for i, names in enumerate(labels.values()):
            valid[i, : len(names)] = True
        self.register_buffer("valid", valid, persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, pooled: Tensor, task_ids: Tensor) -> Tensor:
        """``[batch, max classes]`` logits; a task's missing classes are the dtype's lowest value."""
        if task_ids is None:
            raise ValueError("task_ids: an encoder model with task heads needs each sequence's task id")
        task_ids = torch.as_tensor(task_ids, device=pooled.device).long().reshape(-1)
        if task_ids.numel() != pooled.size(0) or bool(((task_ids < 0) | (task_ids >= len(self.tasks))).any()):
            raise ValueError(f"task_ids: expected {pooled.size(0)} ids in [0, {len(self.tasks) - 1}] ({self.tasks})")
        weight, bias = self.weight[task_ids], self.bias[task_ids]
        logits = torch.einsum("bch,bh->bc", weight, self.dropout(pooled).to(weight.dtype)) + bias
        return logits.masked_fill(~self.valid[task_ids], torch.finfo(logits.dtype).min)

    def task_head(self, task: str) -> tuple[Tensor, Tensor]:
        """(weight ``[classes, hidden]``, bias ``[classes]``) of one task's head: the classifier of a stock model."""
        i, count = self.tasks.index(task), len(self.labels[task])
        return self.weight[i, :count].detach().clone(), self.bias[i, :count].detach().clone()

    def label_names(self, task_ids: Tensor, classes: Tensor) -> list[str]:
        """Each row's predicted class index as its task's label."""
        return [self.labels[self.tasks[int(t)]][int(c)] for t, c in zip(task_ids.tolist(), classes.tolist())]
