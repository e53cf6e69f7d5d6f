"""Tokenisation of canonical examples (with truncation counted per task) and batch collation.

``seq2seq``: encoder input = the tokenizer's special-token frame around the input (``[START] … </s>``
with the project tokenizer), labels = target + ``</s>``. ``causal``: one sequence
``frame(input) + target + eos``, with the prompt part masked out of the labels. ``classify`` (encoders with one
head per task): the framed input, and one label: the target's index among its task's labels. Too long inputs or
targets are cut at the end (the special tokens are kept) and counted, never silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from ..metrics import normalise
from .registry import TaskRegistry

MODES = ("seq2seq", "causal", "classify")
IGNORE_INDEX = -100


@dataclass
class TruncationReport:
    """Per task: examples, inputs cut, targets cut."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, task: str, input_cut: bool, target_cut: bool) -> None:
        row = self.counts.setdefault(task, {"examples": 0, "inputs_truncated": 0, "targets_truncated": 0})
        row["examples"] += 1
        row["inputs_truncated"] += int(input_cut)
        row["targets_truncated"] += int(target_cut)

    @property
    def any(self) -> bool:
        return any(r["inputs_truncated"] or r["targets_truncated"] for r in self.counts.values())

    def summary(self) -> str:
        cut = [
            f"{t}: {r['inputs_truncated']}/{r['examples']} inputs, {r['targets_truncated']} targets"
            for t, r in sorted(self.counts.items())
            if r["inputs_truncated"] or r["targets_truncated"]
        ]
        return "truncated: " + ("; ".join(cut) if cut else "none")


def special_token_frame(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[int]], list[int]]:
    """``ids -> ids with the tokenizer's special tokens around them`` (its ``build_inputs_with_special_tokens``;
    for a stock fast tokenizer without that method, the prefix and suffix its post-processor puts around a probe
    text)."""
    build = getattr(type(tokenizer), "build_inputs_with_special_tokens", None)
    if build is not None:
        return tokenizer.build_inputs_with_special_tokens
    plain = tokenizer("probe", add_special_tokens=False)["input_ids"]
    full = tokenizer("probe", add_special_tokens=True)["input_ids"]
    at = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None)
    if not plain or at is None:
        raise ValueError(f"{type(tokenizer).__name__}: cannot tell where its special tokens go around a text")
    prefix, suffix = full[:at], full[at + len(plain) :]
    return lambda ids: prefix + list(ids) + suffix


def tokenize_examples(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    registry: TaskRegistry,
    max_input_length: int,
    max_target_length: int,
    mode: str = "seq2seq",
    heads: Mapping[str, Sequence[str]] | None = None,
) -> tuple[datasets.Dataset, TruncationReport]:
    """Add ``input_ids``, ``labels``, ``task_id``, ``task_type_id`` columns; returns the report of cuts.
    ``classify``: ``heads`` gives each task's labels; a target that is none of them gets the ignored label."""
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {list(MODES)}, got {mode!r}")
    label_ids = {t: {normalise(name): i for i, name in enumerate(names)} for t, names in (heads or {}).items()}
    if mode == "classify":
        headless = sorted(set(dataset["task"]) - set(label_ids))
        if headless:
            raise ValueError(f"tasks {headless} have no classification head (the model's heads: {sorted(label_ids)})")
    frame = tokenizer.num_special_tokens_to_add(pair=False)
    if max_input_length <= frame or max_target_length < 2:
        raise ValueError(f"max_input_length must exceed the {frame} special tokens and max_target_length be >= 2")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    framed = special_token_frame(tokenizer)

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        inputs = tokenizer(batch["input"], add_special_tokens=False)["input_ids"]
        targets = tokenizer(batch["target"], add_special_tokens=False)["input_ids"]
        out: dict[str, list[Any]] = {
            "input_ids": [],
            "labels": [],
            "input_truncated": [],
            "target_truncated": [],
            "task_id": [],
            "task_type_id": [],
        }
        for task, text, target, gold in zip(batch["task"], inputs, targets, batch["target"]):
            keep_in = max_input_length - frame
            keep_out = max_target_length - len(eos)
            prompt = framed(text[:keep_in])
            answer = target[:keep_out] + eos
            if mode == "classify":
                out["input_ids"].append(prompt)
                out["labels"].append([label_ids[task].get(normalise(gold), IGNORE_INDEX)])
            elif mode == "seq2seq":
                out["input_ids"].append(prompt)
                out["labels"].append(answer)
            else:
                out["input_ids"].append(prompt + answer)
                out["labels"].append([IGNORE_INDEX] * len(prompt) + answer)
            out["input_truncated"].append(len(text) > keep_in)
            out["target_truncated"].append(mode != "classify" and len(target) > keep_out)
            out["task_id"].append(registry.task_id(task))
            out["task_type_id"].append(registry.type_id(task))
        return out

    tokenized = dataset.map(encode, batched=True, desc="tokenizing", load_from_cache_file=False)
    report = TruncationReport()
    for task, cut_in, cut_out in zip(tokenized["task"], tokenized["input_truncated"], tokenized["target_truncated"]):
        report.add(task, cut_in, cut_out)
    return tokenized, report


class Collator:
    """Pads a list of tokenised examples into a batch with per-sample ``task_type_ids`` and ``task_ids``.

    Padding side: right for ``seq2seq``; for ``causal``, ``padding_side`` (``left`` suits generation)."""

    def __init__(self, pad_token_id: int, mode: str = "seq2seq", padding_side: str = "right") -> None:
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {list(MODES)}, got {mode!r}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id, self.mode, self.padding_side = pad_token_id, mode, padding_side

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {
            "input_ids": self._pad([f["input_ids"] for f in features], self.pad_token_id),
            "attention_mask": self._pad([[1] * len(f["input_ids"]) for f in features], 0),
            "labels": self._pad([f["labels"] for f in features], IGNORE_INDEX),
            "task_type_ids": torch.tensor([f["task_type_id"] for f in features], dtype=torch.long),
            "task_ids": torch.tensor([f["task_id"] for f in features], dtype=torch.long),
        }
        return batch

    def _pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), value, dtype=torch.long)
        for i, row in enumerate(rows):
            if self.padding_side == "right" or self.mode == "seq2seq":
                out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            else:
                out[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        return out
