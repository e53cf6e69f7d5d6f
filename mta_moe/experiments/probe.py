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
from ..logs import get_logger
from ..modeling import MTAModel
from ..training.heads_setup import task_profiles, with_task_heads
from ..training.model_factory import build_backbone, build_tokenizer, model_mode
from ..training.run_config import RunConfig
from .affinity import Affinity, average, measure

WARM_STEPS = 20  # mixed batches at lr 0 that warm Adam's moments before measuring a trained export


@dataclass
class ProbeSettings:
    steps: int = 600  # probe training steps
    every: int = 150  # measure every this many steps
    rows: int = 64  # held-out probe rows per task
    horizon: int = 10  # lookahead: AdamW steps on one task's batches before every task's loss is read


def token_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Mean token cross-entropy of a batch (the model's own loss, routing aux loss excluded)."""
    out = model.forward_batch(batch)
    return out.loss - (model.last_aux_loss if model.last_aux_loss is not None else 0.0)


def run_probe(
    cfg: RunConfig,
    out: Path,
    settings: ProbeSettings,
    export: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Affinity:
    """Affinity of the configured data's tasks: along a shared probe run, or at ``export`` (a trained model);
    progress goes to ``log`` (default: the ``mta_moe`` logger)."""
    log = log or get_logger(__name__).info
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
        base = build_backbone(cfg.model, tokenizer, cfg.train.seed)
        layer = cfg.mta.replace(
            num_experts=1, k=1, ep_size=1, route_by="type", tasks=None, task_adapter_assignment=None
        )
        profiles = task_profiles(cfg.data, data)  # (an encoder: one head per task)
        model = MTAModel(
            base, with_task_heads(layer, model_mode(base), base.config.model_type, profiles, data.registry.names)
        )
        registry = data.registry
    mode = model_mode(model.base_model)
    train, _ = tokenize_examples(
        data.splits["train"],
        tokenizer,
        registry,
        cfg.data.max_input_length,
        cfg.data.max_target_length,
        mode,
        model.mta_config.task_heads,
    )
    collate = Collator(tokenizer.pad_token_id, mode, "left" if mode == "causal" else "right")
    train = train.select_columns(["input_ids", "labels", "task_type_id", "task_id"]).to_list()
    rows = data.task_indices()
    rng = random.Random(cfg.train.seed)
    probe_rows = {t: set(rng.sample(rows[t], min(settings.rows, len(rows[t]) // 2))) for t in tasks}
    batches = {t: collate([train[i] for i in sorted(probe_rows[t])]) for t in tasks}
    rest = {t: [i for i in rows[t] if i not in probe_rows[t]] for t in tasks}  # the lookahead trains on these
    per_step = int(cfg.ds["train_micro_batch_size_per_gpu"])

    def train_batch(task: str, step: int) -> dict[str, Tensor]:
        pool = rest[task]
        return collate([train[pool[(step * per_step + k) % len(pool)]] for k in range(per_step)])

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sampler = MixtureSampler({t: len(rest[t]) for t in tasks}, SamplingConfig(strategy="uniform"), cfg.data.seed)

    def mixed_step(index: int, lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = collate([train[rest[task][i]] for task, i in sampler.next_batch(per_step, index)])
        optimizer.zero_grad()
        token_loss(model, batch).backward()
        optimizer.step()

    def measure_here() -> tuple[Tensor, Tensor]:
        return measure(model, batches, token_loss, params, train_batch, optimizer, settings.horizon)

    model.train()
    if export is not None:  # no optimizer state to look ahead with: warm Adam's moments without moving
        for index in range(1, WARM_STEPS + 1):
            mixed_step(index, 0.0)
        for group in optimizer.param_groups:
            group["lr"] = cfg.train.lr
        return average(tasks, [measure_here()], [0])
    measurements, at = [], []
    for index in range(1, settings.steps + 1):
        mixed_step(index, cfg.train.lr)
        if index % settings.every == 0 or index == settings.steps:
            measurements.append(measure_here())
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
