"""An export loaded for scoring: the model on a device, its tokenizer, its tasks in the order it routes them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import Collator, TaskRegistry, load_tokenizer
from ..data.tokenizer import check_tokenizer
from ..modeling import MTAModel


@dataclass
class LoadedExport:
    model: MTAModel
    tokenizer: Any
    registry: TaskRegistry
    profiles: dict[str, dict[str, Any]]  # {task: {"kind", "labels"}}; empty for exports without them

    @property
    def mode(self) -> str:
        if self.heads is not None:
            return "classify"
        return "seq2seq" if self.model.config.is_encoder_decoder else "causal"

    @property
    def heads(self) -> dict[str, list[str]] | None:
        """Each task's labels in head order (encoder models with task heads), else None."""
        heads = getattr(self.model, "task_heads", None)
        return None if heads is None else heads.labels

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def collator(self) -> Collator:
        return Collator(self.tokenizer.pad_token_id, self.mode, "left" if self.mode == "causal" else "right")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when one is visible, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` as
    named (a CUDA device that is not there is refused)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(
            f"--device {name}: no such CUDA device is visible ({torch.cuda.device_count()} visible); use --device cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def load_export(directory: str | Path, device: str | torch.device = "cpu") -> LoadedExport:
    """An export written by the trainer (model, tokenizer, tasks.json), its model on ``device``."""
    directory = Path(directory)
    tasks_file = directory / "tasks.json"
    if not tasks_file.is_file():
        raise FileNotFoundError(f"{tasks_file}: missing; the model must be an export written by launchers/train.py")
    tasks = json.loads(tasks_file.read_text())
    model = MTAModel.from_pretrained(directory).to(resolve_device(device) if isinstance(device, str) else device)
    # task ids as the model was trained with them (a model that routes by task keys on them)
    # (a model with task heads: the head order)
    heads = model.mta_config.task_heads
    order = model.mta_config.tasks if model.mta_config.route_by == "task" else list(heads or tasks["tasks"])
    registry = TaskRegistry(tasks["task_types"], tasks["tasks"], order=order)
    tokenizer = load_tokenizer(directory)
    check_tokenizer(tokenizer, directory, f"{directory}: the tokenizer files")
    return LoadedExport(model, tokenizer, registry, tasks.get("profiles", {}))
