"""A small token model with one MTA layer, shared by the single-process and multi-rank tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mta_moe import MTAConfig, MTALayer


def make_ffn(hidden: int, inner: int) -> nn.Module:
    return nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, hidden))


class ToyMTAModel(nn.Module):
    """embedding -> MTA(FFN) with residual -> LayerNorm -> vocabulary head; next-token loss + aux loss."""

    def __init__(self, config: MTAConfig, vocab: int = 64, hidden: int = 32, inner: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.mta = MTALayer(config, hidden, make_ffn(hidden, inner), layer_id=0)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, input_ids: torch.Tensor, task_type_ids: torch.Tensor | None) -> torch.Tensor:
        h = self.embed(input_ids)
        out, aux, _ = self.mta(h, task_type_ids)
        logits = self.head(self.norm(h + out))
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), input_ids[:, 1:].reshape(-1))
        return loss + aux


def make_batch(seed: int, batch: int = 8, seq_len: int = 12, vocab: int = 64, num_task_types: int = 3):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    tasks = torch.randint(0, num_task_types, (batch,), generator=gen)
    # make the first token depend on the task so a learned gate has something to read
    ids[:, 0] = tasks
    return ids, tasks
