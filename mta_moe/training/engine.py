"""The optimizer and the DeepSpeed engine of one training stage: the parameter groups (what trains, at which
learning rate; stage-2 patterns, growth, gradual unfreezing) and the engine over AdamW on them, with the
learning-rate schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import deepspeed
import pydantic
import torch

from ..config import ConfigError
from ..modeling import MTAModel, format_parameter_counts
from .add_task import growth_param_groups
from .logger import RunLogger, monitor_config
from .objective import TrainingModule
from .param_groups import optimizer_param_groups, pattern_param_groups
from .run import info
from .run_config import RunConfig
from .task_balance import TaskBalance
from .unfreezing import UnfreezeSchedule


def param_groups(
    cfg: RunConfig, model: MTAModel, growth: Any, balance: TaskBalance
) -> tuple[list[dict[str, Any]], UnfreezeSchedule | None]:
    """The optimizer's parameter groups (what trains, at which lr) and the gradual-unfreezing schedule (or None)."""
    t, unfreeze = cfg.train, None
    if growth is not None:
        groups = growth_param_groups(model, growth, t.lr, t.weight_decay)
    elif t.trainable is not None:
        unused = [p for layer in model.mta_layers.values() for p in layer.selector.unused_parameters()]
        groups = pattern_param_groups(model, t.trainable, t.lr, t.weight_decay, keep_frozen=unused)
    elif t.unfreeze is not None:
        unfreeze = UnfreezeSchedule(model, t.unfreeze.get("start_step", 0), t.unfreeze["every"])
        groups = unfreeze.param_groups(t.lr, t.weight_decay)
    else:
        if t.stage == 2:
            model.freeze_all_but_mta()
        groups = optimizer_param_groups(model, t.lr, t.weight_decay)
    zero = cfg.ds.get("zero_optimization", {}).get("stage", 0)
    if zero in (1, 2) and not any(g.get("moe") for g in groups):
        raise ConfigError(
            "mta.train.trainable: no trainable adapter (MoE expert) parameter; DeepSpeed's ZeRO "
            f"stage {zero} needs at least one (add a pattern such as '*deepspeed_experts*'), or "
            "set zero_optimization.stage to 0 to train without them"
        )
    return groups + balance.param_groups(), unfreeze


def build_engine(
    cfg: RunConfig,
    model: MTAModel,
    groups: list[dict[str, Any]],
    balance: TaskBalance,
    out: Path,
    logger: RunLogger,
    world: int,
) -> tuple[Any, Any]:
    """The DeepSpeed engine over AdamW on ``groups`` and the learning-rate schedule (the trainer's warm-up and
    linear decay, or DeepSpeed's from a ``scheduler`` section); the engine's view of its keys is logged."""
    t = cfg.train
    info(format_parameter_counts(model))
    optimizer = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
    warmup, total = t.warmup_steps, t.steps

    def schedule(step: int) -> float:  # linear warmup, then linear decay to 10 %
        if step < warmup:
            return (step + 1) / warmup
        return max(0.1, 1.0 - 0.9 * (step - warmup) / max(1, total - warmup))

    # a DeepSpeed "scheduler" section (WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle...) is DeepSpeed's
    # to build over this optimizer; without one, the trainer's own warm-up / linear decay
    scheduler = None if "scheduler" in cfg.ds else torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ds = monitor_config(cfg.ds, out)
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10**9)
    try:
        engine, _, _, scheduler = deepspeed.initialize(
            model=TrainingModule(model, balance), optimizer=optimizer, lr_scheduler=scheduler, config=ds
        )
    except pydantic.ValidationError as exc:  # DeepSpeed's own config models: one line naming the key
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ())]
        sections = [k for k, v in ds.items() if isinstance(v, dict) and loc and loc[0] in v]
        where = ".".join(sections[:1] + loc) if len(sections) == 1 else ".".join(loc) or exc.title
        raise ConfigError(f"{where}: {first.get('msg')} (DeepSpeed's {exc.title})") from None
    if engine.monitor.enabled and logger.enabled:  # the training records through DeepSpeed's monitors too
        logger.monitor = engine.monitor.write_events
    _log_engine(engine, model, logger, world)
    return engine, scheduler


def _log_engine(engine: Any, model: MTAModel, logger: RunLogger, world: int) -> None:
    """The engine's own view of the DeepSpeed keys, as it applies them (the ``engine`` record)."""
    e = engine
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in e.module.parameters()})
    checkpointed = sum(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
    logger.log(
        "engine",
        0,
        {
            "device": str(e.device),
            "param_dtypes": dtypes,
            "zero_stage": e.zero_optimization_stage(),
            "activation_checkpointed_modules": checkpointed,
            "train_micro_batch_size_per_gpu": e.train_micro_batch_size_per_gpu(),
            "gradient_accumulation_steps": e.gradient_accumulation_steps(),
            "gradient_clipping": e.gradient_clipping(),
            "bf16": e.bfloat16_enabled(),
            "fp16": e.fp16_enabled(),
            "overlap_comm": e.zero_overlap_comm(),
            "contiguous_gradients": e.zero_contiguous_gradients(),
            "steps_per_print": e.steps_per_print(),
        },
    )
    info(f"engine: {e.device}, parameters in {', '.join(dtypes)}, ZeRO stage {e.zero_optimization_stage()}")
    if world == 1 and e.zero_optimization_stage() > 0:
        info(
            "one process: ZeRO partitions nothing here but adds a gradient hook per parameter; "
            "--zero_optimization.stage 0 starts faster (the shipped configs keep 2 for multi-rank runs)"
        )
