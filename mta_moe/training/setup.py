"""Building one training stage, top to bottom: :func:`build_run` claims the output directory, decides whether and
from which checkpoint the run resumes, loads the data, builds the model (fresh, from an export, or grown), its
parameter groups and the DeepSpeed engine, and returns the plain :class:`~.run.Run` that :func:`.trainer.train`
runs. A failure here leaves no run record (run_config.json, metrics, run_id) behind."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..collectives import all_reduce
from ..config import ConfigError, MTAConfig, sharing_adapters
from ..data import IGNORE_INDEX, Collator, load_task_data, load_tokenizer, make_sampler, tokenize_examples
from ..data.tokenizer import check_tokenizer
from ..logs import get_logger
from ..modeling import MTAModel
from ..modeling.persistence import read_saved_config
from .add_task import grow_for_training
from .checkpoints import CheckpointError, check_free_space, check_output_dir, new_run_id, read_run_id, verify
from .distributed import barrier, init_process_group
from .engine import build_engine, param_groups
from .heads_setup import check_heads_cover, task_profiles, with_task_heads
from .logger import RunLogger
from .losses import task_weight_vector
from .model_factory import build_backbone, build_tokenizer, model_mode
from .monitor import TrainingMonitor
from .objective import Objective
from .resume_check import check_resume, record_data
from .run import CHECKPOINTS, EXPORT, Run, apply_unfreeze, info, load_checkpoint
from .run_config import RunConfig
from .run_dir import RunDirError, claim
from .stages import restart_config
from .step_health import StepHealth
from .task_balance import TaskBalance

__all__ = ["EXPORT", "build_run"]
log = get_logger(__name__)


def build_run(
    cfg: RunConfig,
    resume: bool = False,
    trust_checkpoint: bool = False,
    overwrite: bool = False,
    resume_with_changes: tuple[str, ...] = (),
) -> Run:
    """Everything before the first step. ``resume``: the checkpoint is checked first (see :mod:`.checkpoints`)
    and loaded once the engine is built; the output directory is locked for the run's life and another run in it
    is refused unless ``overwrite`` (:mod:`.run_dir`); ``Run.release_output_dir`` unlocks it. A resumed run must
    have the settings and data it started with, except ``resume_with_changes`` (:mod:`.resume_check`)."""
    rank, world = init_process_group(cfg.train.distributed_timeout_s)
    out = Path(cfg.train.output_dir)
    check_output_dir(out)
    lock = agreed(lambda: claim(out, resume, overwrite), rank, world, out, ranks=(0,))
    try:
        # resuming is decided here, once: the verified checkpoint tag (None: a fresh start)
        resume_tag = (
            agreed(lambda: verify(out, out / CHECKPOINTS, trust_checkpoint), rank, world, out) if resume else None
        )
        return _build(cfg, rank, world, out, lock, resume_tag, resume_with_changes)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def agreed(check: Callable[[], Any], rank: int, world: int, out: Path, ranks: tuple[int, ...] | None = None) -> Any:
    """``check()`` on ``ranks`` (None: every rank); when it raises on any rank, every rank raises (the failing
    ranks their own error, the others one that names it), so no rank waits in a collective for one that left."""
    result, error = None, None
    if ranks is None or rank in ranks:
        try:
            result = check()
        except (RunDirError, CheckpointError) as exc:
            error = exc
    failed = torch.tensor([0.0 if error is None else 1.0])
    if world > 1:
        all_reduce(failed, op=dist.ReduceOp.MAX)
    if error is not None:
        raise error
    if failed.item():
        raise CheckpointError(f"another rank refused to start in {out} (its error names why)")
    return result


@dataclass
class _Parts:
    """The data and model half of a run, before the engine."""

    data: Any
    tokenizer: Any
    model: MTAModel
    growth: Any  # add_task_types: what grew (None otherwise)
    new_tasks: list[str]  # adding task types to a by-task model: the data's tasks the export lacks
    profiles: dict[str, dict[str, Any]]  # each task's kind and labels, read once from the training rows
    sampled: list[str] | None = None  # the tasks training batches come from (set by _grown)


def _build(
    cfg: RunConfig,
    rank: int,
    world: int,
    out: Path,
    lock: Any,
    resume_tag: str | None,
    resume_with_changes: tuple[str, ...],
) -> Run:
    resuming = resume_tag is not None
    changes = check_resume(out, cfg, resume_with_changes) if resuming else []
    logger = RunLogger(out, enabled=rank == 0)
    logger.log(
        "run",
        0,
        {
            "stage": cfg.train.stage,
            "world_size": world,
            "ep_size": cfg.mta.ep_size,
            "resume": resuming,
            "config": cfg.source,
            "changed_on_resume": changes,
        },
    )
    parts, tokenised = _data_and_model(cfg, rank, out, logger, resuming)
    d = cfg.data
    mode = model_mode(parts.model.base_model)
    collate = Collator(parts.tokenizer.pad_token_id, mode, padding_side="left" if mode == "causal" else "right")
    train_rows, task_rows, val_set, val_rows = tokenised(mode, collate)
    parts = _grown(cfg, parts, train_rows, task_rows, collate, logger)
    model = parts.model  # (adding task types: the grown model)
    if cfg.train.activation_checkpointing:
        model.activation_checkpointing_enable()

    def example_length(task: str, index: int) -> tuple[int, int]:  # mta.data.group_by_length orders by it
        row = train_rows[task_rows[task][index]]
        return len(row["input_ids"]), sum(label != IGNORE_INDEX for label in row["labels"])

    sampler = make_sampler(d, {t: len(task_rows[t]) for t in parts.sampled}, example_length, cfg.train.steps)
    if d.sampling.strategy == "dynamic":
        validated = set(val_set["task"]) if val_set is not None else set()
        missing = [t for t in parts.sampled if t not in validated]
        if missing:
            raise ConfigError(
                "mta.data.sampling.strategy: 'dynamic' re-weights the mixture after each "
                f"validation, but tasks {missing} have no validation rows"
            )
    names = parts.data.registry.names
    balance = TaskBalance(cfg.train.weighting, names, task_weight_vector(cfg.train.task_weights, names))
    profiles = parts.profiles
    check_free_space(out, sum(p.numel() for p in model.parameters()))
    groups, unfreeze = param_groups(cfg, model, parts.growth, balance)
    engine, scheduler = build_engine(cfg, model, groups, balance, out, logger, world)
    objective = Objective(cfg.train, balance, mode, world)
    if balance.method == "gradnorm":
        waiting = [p for u in unfreeze.units for p in u.params] if unfreeze else []
        named = balance.gradnorm_parameters(model, exclude=waiting)
        objective.gradnorm_params = [p for _, p in named]
        info(f"GradNorm: gradient norms w.r.t. {[n for n, _ in named]}")
    run = Run(
        cfg=cfg,
        rank=rank,
        world=world,
        out=out,
        lock=lock,
        logger=logger,
        resume_tag=resume_tag,
        data=parts.data,
        tokenizer=parts.tokenizer,
        model=model,
        mode=mode,
        collate=collate,
        train_rows=train_rows,
        task_rows=task_rows,
        val_set=val_set,
        val_rows=val_rows,
        profiles=profiles,
        sampler=sampler,
        balance=balance,
        engine=engine,
        scheduler=scheduler,
        unfreeze=unfreeze,
        objective=objective,
        health=StepHealth(engine.device),
        monitor=TrainingMonitor(cfg.train.warn_margin, cfg.train.baseline_scores),
    )
    if resuming:  # the engine, sampler and monitor are built: their state comes from the checkpoint
        load_checkpoint(run)
    apply_unfreeze(run)
    if rank == 0:  # started: the run's record
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.json").write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
        if not resuming:
            record_data(out, cfg)
        run.run_id = read_run_id(out) if resuming and read_run_id(out) else new_run_id(out)
    logger.start()
    barrier()
    return run


def _data_and_model(cfg: RunConfig, rank: int, out: Path, logger: RunLogger, resuming: bool):
    """The task data, tokenizer and model (fresh, or from ``init_from``), and a function that tokenises the splits
    for the model's mode: ``(mode, collate) -> (train_rows, task_rows, val_set, val_rows)``."""
    source = Path(cfg.train.init_from) if cfg.train.init_from is not None else None
    layer = cfg.mta if source is None else _restart_config(cfg, source)
    task_types = cfg.mta.task_types if cfg.train.add_task_types is not None else layer.task_types
    if rank == 0:  # generates the bundled suite once; the other ranks read it afterwards
        data = load_task_data(cfg.data, task_types, out / "data", cfg.check_task_names)
    barrier()
    if rank != 0:
        data = load_task_data(cfg.data, task_types, out / "data", cfg.check_task_names)
    for report in data.reports:
        info(report.summary())
    profiles = task_profiles(cfg.data, data)
    if source is None:  # stage 1 (stage 2 and add_task_types start from an export)
        train_texts = list(data.splits["train"]["input"]) + list(data.splits["train"]["target"])
        # trained once, by rank 0 (the other ranks load it); a resumed run keeps the tokenizer it trained with
        train_here = not (resuming and (out / "tokenizer").is_dir())
        if rank == 0:
            tokenizer = build_tokenizer(cfg.model, train_texts, out / "tokenizer", train_here=train_here)
        barrier()
        if rank != 0:
            tokenizer = build_tokenizer(cfg.model, train_texts, out / "tokenizer", train_here=False)
        base = build_backbone(cfg.model, tokenizer, cfg.train.seed)
        mta, registry = _layer_config(layer, data.registry)
        mta = with_task_heads(mta, model_mode(base), base.config.model_type, profiles, registry.names)
        data.registry = registry if mta.task_heads is None else registry.in_order(list(mta.task_heads))
        model, new_tasks = MTAModel(base, mta), []
    else:
        tokenizer, model, new_tasks = _load_init_from(cfg, source, layer, data, profiles)

    def tokenised(mode: str, collate: Collator):
        d = cfg.data
        heads = model.mta_config.task_heads
        train_set, report = tokenize_examples(
            data.splits["train"], tokenizer, data.registry, d.max_input_length, d.max_target_length, mode, heads
        )
        info(report.summary())
        logger.log("truncation", 0, {"train": report.counts})
        val_set, val_rows = None, []
        if "validation" in data.splits:
            val_set, _ = tokenize_examples(
                data.splits["validation"],
                tokenizer,
                data.registry,
                d.max_input_length,
                d.max_target_length,
                mode,
                heads,
            )
            val_rows = val_set.select_columns(["input_ids", "labels", "task_type_id", "task_id"]).to_list()
        # the collated columns as plain Python rows, read once: indexing a datasets.Dataset formats a row per call
        train_rows = train_set.select_columns(["input_ids", "labels", "task_type_id", "task_id"]).to_list()
        return train_rows, data.task_indices(), val_set, val_rows

    return _Parts(data, tokenizer, model, None, new_tasks, profiles), tokenised


def _layer_config(layer: MTAConfig, registry: Any) -> tuple[MTAConfig, Any]:
    """``mta`` for a stage-1 model and the task registry in its order: routing by task names the data's tasks (ids
    follow ``mta.tasks``)."""
    mta = layer
    if mta.route_by == "task":
        if mta.tasks is None:
            mta = mta.replace(tasks=list(registry.names))
        registry = registry.in_order(mta.tasks)
    shared = sharing_adapters(mta)
    if shared:
        log.warning(
            f"{mta.num_routes} routing keys (mta.route_by {mta.route_by!r}) on {mta.num_experts} adapters: "
            + "; ".join(f"adapter {a} starts shared by {', '.join(keys)}" for a, keys in shared.items())
            + " (set mta.num_experts to the number of keys, or mta.task_adapter_assignment, to change it)"
        )
    return mta, registry


def _restart_config(cfg: RunConfig, source: Path) -> MTAConfig:
    """The layer config of a run that starts from an export: the export's, with this run's keys applied where
    they can take effect (:func:`.stages.restart_config`); a key that cannot is refused by name."""
    if not (source / "mta_config.json").is_file():
        raise ConfigError(
            f"mta.train.init_from: {source} is not a stage-1 export (no mta_config.json); "
            f"run stage 1 first or point to its {EXPORT}/ directory"
        )
    saved_stage, saved = read_saved_config(source)
    growing = cfg.train.add_task_types is not None
    return restart_config(saved, saved_stage, cfg.mta, cfg.mta_keys | {"ep_size"}, str(source), growing)


def _load_init_from(
    cfg: RunConfig, source: Path, layer: MTAConfig, data: Any, profiles: dict[str, dict[str, Any]]
) -> tuple[Any, MTAModel, list[str]]:
    """Stage 2 (or adding task types) from an export, built with the layer config of :func:`_restart_config`; the
    data's task ids follow a by-task model's order. Returns the tokenizer, the model and the new tasks (adding
    task types to a by-task model)."""
    growing = cfg.train.add_task_types is not None
    # (adding task types moves tasks to the new types on purpose: mta.data.type_overrides)
    trained_types = (
        json.loads((source / "tasks.json").read_text())["tasks"]
        if (source / "tasks.json").is_file() and not growing
        else {}
    )
    changed = {
        t: (trained_types[t], ty)
        for t, ty in data.registry.type_of.items()
        if t in trained_types and trained_types[t] != ty
    }
    if changed:
        task, (was, now) = sorted(changed.items())[0]
        raise ConfigError(
            f"mta.data: task {task!r} has type {now!r} in this run's data but the export at {source} "
            f"was trained with it as {was!r}; use the same mta.data.type_overrides as that run"
        )
    tokenizer = load_tokenizer(source)
    check_tokenizer(tokenizer, source, f"mta.train.init_from {source}: the tokenizer files")
    model = MTAModel.from_pretrained(source, ep_size=cfg.mta.ep_size, config=layer)
    if cfg.train.stage == 1 and not growing and model.stage != 1:
        raise ConfigError(
            f"mta.train.init_from: {source} is a stage-{model.stage} export; a stage-1 run "
            "continues stage-1 exports only"
        )
    if model.stage == 1 and not growing and cfg.train.stage == 2:
        model.enable_stage2()
    new_tasks: list[str] = []
    if model.task_heads is not None:  # an encoder: the data's tasks are the heads' (same order)
        if growing:
            raise ConfigError(
                "mta.train.add_task_types: growing an encoder model with task heads is not supported; "
                "train a new stage 1 with the new tasks"
            )
        check_heads_cover(layer.task_heads, profiles, f"mta.train.init_from {source}")
        data.registry = data.registry.in_order(list(layer.task_heads))
    elif layer.route_by == "task":
        trained = list(layer.tasks)
        new_tasks = sorted(set(data.registry.names) - set(trained)) if growing else []
        data.registry = data.registry.in_order(trained + new_tasks)
    return tokenizer, model, new_tasks


def _grown(
    cfg: RunConfig,
    parts: _Parts,
    train_rows: list[dict[str, Any]],
    task_rows: dict[str, list[int]],
    collate: Collator,
    logger: RunLogger,
) -> _Parts:
    """``add_task_types``: the init_from export with the new task types added; training batches come from their
    tasks only. Otherwise ``parts`` with every task sampled."""
    if cfg.train.add_task_types is None:
        return _Parts(parts.data, parts.tokenizer, parts.model, None, parts.new_tasks, parts.profiles, list(task_rows))
    registry = parts.data.registry
    if parts.model.mta_config.route_by == "task":  # the new routing keys are the data's new tasks
        tasks = parts.new_tasks
        rows = {t: [train_rows[i] for i in task_rows[t]] for t in tasks}
    else:
        trained = parts.model.mta_config.task_types
        new_types = [ty for ty in cfg.mta.task_types if ty not in trained]
        tasks = [t for t in registry.names if registry.type_of[t] in new_types]
        rows = {
            ty: [train_rows[i] for t in tasks if registry.type_of[t] == ty for i in task_rows[t]] for ty in new_types
        }
    model, growth = grow_for_training(
        Path(cfg.train.init_from),
        cfg.mta.task_types,
        cfg.train.add_task_types,
        cfg.mta.ep_size,
        rows,
        collate,
        info,
        new_keys=tasks,
    )
    logger.log(
        "add_task_types",
        0,
        {
            "new_types": growth.new_types,
            "tasks": tasks,
            "new_adapters": growth.new_experts,
            "warm_start": growth.warm_start,
        },
    )
    return _Parts(parts.data, parts.tokenizer, model, growth, parts.new_tasks, parts.profiles, tasks)
