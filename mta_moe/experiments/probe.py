"""The affinity probe: a fully shared model trained briefly on the uniform task mixture, measured along the way
(or a trained export measured once). Plain PyTorch on one process: a measurement, not a training product."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..data import Collator, MixtureSampler, SamplingConfig, load_task_data, tokenize_examples
from ..modeling import MTAModel
from ..training.model_factory import build_backbone, build_tokenizer, model_mode
from ..training.run_config import RunConfig
from .affinity import Affinity, average, measure


RELATIVE_STEP = 3e-4  # default lookahead step: this fraction of the norm of the shared parameters


@dataclass
class ProbeSettings:
    steps: int = 600  # probe training steps
    every: int = 150  # measure every this many steps
    rows: int = 64  # rows per task in each measurement batch
    step_size: float | None = None  # lookahead step length; None: RELATIVE_STEP × the parameters' norm


def token_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Mean token cross-entropy of a batch (the model's own loss, routing aux loss excluded)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                task_type_ids=batch["task_type_ids"], task_ids=batch["task_ids"])
    return out.loss - (model.last_aux_loss if model.last_aux_loss is not None else 0.0)


def run_probe(cfg: RunConfig, out: Path, settings: ProbeSettings, export: str | None = None,
              log: Callable[[str], None] = print) -> Affinity:
    """Affinity of the configured data's tasks: along a shared probe run, or at ``export`` (a trained model)."""
    data = load_task_data(cfg.data, cfg.mta.task_types, out / "data")
    tasks = list(data.registry.names)
    if export is not None:
        from ..evaluation.scoring import load_export
        loaded = load_export(export)
        model, tokenizer = loaded.model, loaded.tokenizer
        unknown = sorted(set(tasks) - set(loaded.registry.names))
        if unknown:
            raise ValueError(f"--model {export}: not trained on the data's tasks {unknown}")
        registry = loaded.registry
    else:
        texts = list(data.splits["train"]["input"]) + list(data.splits["train"]["target"])
        tokenizer = build_tokenizer(cfg.model, texts, out / "tokenizer")
        model = MTAModel(build_backbone(cfg.model, tokenizer, cfg.train.seed),
                         cfg.mta.replace(num_experts=1, k=1, ep_size=1, route_by="type", tasks=None,
                                         task_adapter_assignment=None))
        registry = data.registry
    mode = model_mode(model.base_model)
    train, _ = tokenize_examples(data.splits["train"], tokenizer, registry, cfg.data.max_input_length,
                                 cfg.data.max_target_length, mode)
    collate = Collator(tokenizer.pad_token_id, mode, "right" if mode == "seq2seq" else "left")
    rows = data.task_indices()
    rng = random.Random(cfg.train.seed)
    batches = {t: collate([train[i] for i in rng.sample(rows[t], min(settings.rows, len(rows[t])))]) for t in tasks}
    params = [p for p in model.parameters() if p.requires_grad]
    step = settings.step_size
    if step is None:
        step = RELATIVE_STEP * float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in params)))
    if export is not None:
        return average(tasks, [measure(model, batches, token_loss, params, step)], [0])
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sampler = MixtureSampler({t: len(rows[t]) for t in tasks}, SamplingConfig(strategy="uniform"), cfg.data.seed)
    per_step = int(cfg.ds["train_micro_batch_size_per_gpu"])
    measurements, at = [], []
    model.train()
    for index in range(1, settings.steps + 1):
        picks = sampler.next_batch(per_step, index)
        batch = collate([train[rows[task][i]] for task, i in picks])
        optimizer.zero_grad()
        token_loss(model, batch).backward()
        optimizer.step()
        if index % settings.every == 0 or index == settings.steps:
            measurements.append(measure(model, batches, token_loss, params, step))
            at.append(index)
            log(f"probe step {index}: measured ({len(measurements)} points)")
    return average(tasks, measurements, at)


def write_affinity(affinity: Affinity, groups: list[list[str]], config: dict, out: Path, settings: dict) -> Path:
    """affinity.json (matrices, groups, the layer keys, how it was measured) and its heatmap."""
    from ..evaluation import figures

    out.mkdir(parents=True, exist_ok=True)
    png = figures.affinity_heatmap(out / "affinity.png", affinity.tasks, affinity.normalised(), groups)
    record = {**affinity.as_dict(), "groups": groups, "layer_keys": config, "settings": settings, "png": png.name}
    path = out / "affinity.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
