"""Scoring a per-task stock folder written by ``mta-moe export``: the rows of its task (or task type) through the
stock Hugging Face model, exactly as an MTA export's rows go through the MTA model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import torch

from ..data import TaskRegistry
from ..data.formats import DataError
from .loading import LoadedExport, resolve_device


class StockHeads:
    """The one head of a stock sequence classifier, read like :class:`~mta_moe.modeling.task_heads.TaskHeads`."""

    def __init__(self, task: str, labels: list[str]) -> None:
        self.tasks, self.labels = [task], {task: labels}

    def label_names(self, task_ids: torch.Tensor, classes: torch.Tensor) -> list[str]:
        return [self.labels[self.tasks[int(t)]][int(c)] for t, c in zip(task_ids.tolist(), classes.tolist())]


class StockModel(torch.nn.Module):
    """A stock model behind the MTA model's ``generate`` / ``forward`` signature: the task ids are accepted and not
    needed (the task's adapters are folded into its weights). A sequence classifier has ``task_heads``: its labels."""

    def __init__(self, model: torch.nn.Module, heads: StockHeads | None = None) -> None:
        super().__init__()
        self.model, self.config, self.task_heads = model, model.config, heads

    def forward(self, *args: Any, task_type_ids: Any = None, task_ids: Any = None, **kwargs: Any):
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, task_type_ids: Any = None, task_ids: Any = None, **kwargs: Any):
        return self.model.generate(*args, **kwargs)


def is_stock_folder(directory: str | Path) -> bool:
    """A folder written by ``mta-moe export`` (it records its routing key in mta_merge.json)."""
    from ..merging.export import MERGE_FILE

    return (Path(directory) / MERGE_FILE).is_file()


def load_stock_folder(directory: str | Path, rows: datasets.Dataset, data: str, device: str | torch.device):
    """The folder as a ``LoadedExport`` on ``device`` and the rows of its task (or task type); raises DataError
    when the data holds none."""
    import transformers

    from ..auto_registration import auto_class_for
    from ..merging.export import MERGE_FILE

    directory = Path(directory)
    record = json.loads((directory / MERGE_FILE).read_text())
    # a classifier carries one task's head (with route_by type, its type's adapters): the rows of that task
    key, route_by = (record["task"], "task") if "task" in record else (record["routing_key"], record["route_by"])
    column = "task" if route_by == "task" else "type"
    kept = rows.filter(lambda r: r[column] == key)
    if len(kept) == 0:
        raise DataError(f"{data}: no rows of {route_by} {key!r}, the one {directory} was exported for")
    config = transformers.AutoConfig.from_pretrained(directory)
    device = resolve_device(device) if isinstance(device, str) else device
    model = getattr(transformers, auto_class_for(config)).from_pretrained(directory).to(device).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    task_to_type = dict(zip(kept["task"], kept["type"]))
    registry = TaskRegistry(list(dict.fromkeys(task_to_type.values())), task_to_type)
    heads, profiles = None, {}
    if record["architecture"].endswith("ForSequenceClassification"):  # labels in class order: all the task has
        heads = StockHeads(key, [config.id2label[i] for i in range(config.num_labels)])
        profiles = {key: {"kind": "classification", "labels": heads.labels[key]}}
    return LoadedExport(StockModel(model, heads), tokenizer, registry, profiles), kept
