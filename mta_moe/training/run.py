"""One training stage's parts, as a plain object: :class:`Run` holds what :func:`.setup.build_run` builds (the data,
model, engine, samplers) and :class:`TrainState`, what the loop changes; the checkpoint of both (saved and loaded
here, with the state passed explicitly) and the export."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from ..logs import get_logger
from ..modeling.persistence import gathered_state
from .checkpoints import CheckpointError, commit, latest_tag
from .distributed import barrier
from .exports import card_source, write_export
from .run_config import RunConfig

CHECKPOINTS = "checkpoints"
EXPORT = "export"
BEST = "best"
log = get_logger("mta_moe.training.trainer")


@dataclass
class TrainState:
    """What the loop changes besides the weights, the optimizer and the sampler; a checkpoint keeps it."""

    step: int = 0
    best: float = -math.inf  # the best validation macro so far
    skipped: int = 0  # batches skipped for a non-finite loss (mta.train.skip_nonfinite_batches)
    evals_since_best: int = 0  # validations in a row without a better macro (mta.train.early_stopping)


@dataclass
class Run:
    """Everything one training stage runs on (built by :func:`.setup.build_run`, trained by
    :func:`.trainer.train`)."""

    cfg: RunConfig
    rank: int
    world: int
    out: Path
    lock: Any  # the output directory's RunDirLock (rank 0), or None
    logger: Any  # RunLogger
    resume_tag: str | None  # the verified checkpoint this run resumes from; None: a fresh start
    data: Any  # TaskData: splits, registry (task ids), reports
    tokenizer: Any
    model: Any  # MTAModel
    mode: str  # "seq2seq" or "causal"
    collate: Any  # Collator
    train_rows: list[dict[str, Any]]  # the tokenised training rows
    task_rows: dict[str, list[int]]  # task -> its rows in train_rows
    val_set: Any  # the tokenised validation split (a datasets.Dataset), or None
    val_rows: list[dict[str, Any]]
    profiles: dict[str, Any]  # task -> how it is scored (kind, labels)
    sampler: Any  # MixtureSampler or LengthGroupedSampler
    balance: Any  # TaskBalance
    engine: Any  # the DeepSpeed engine
    scheduler: Any
    unfreeze: Any  # UnfreezeSchedule or None
    objective: Any  # Objective
    health: Any  # StepHealth
    monitor: Any  # TrainingMonitor
    state: TrainState = field(default_factory=TrainState)
    run_id: str | None = None  # rank 0: the id its checkpoints are committed under

    def release_output_dir(self) -> None:
        """Remove this run's lock on its output directory (rank 0; once)."""
        if self.lock is not None:
            self.lock.release()


def info(message: str) -> None:
    """A progress message (``mta_moe`` logger; printed by rank 0 under the command-line handler)."""
    log.info(message)


def save_checkpoint(run: Run) -> None:
    """A DeepSpeed checkpoint tagged by step, with the train state, sampler, monitor and RNG; its manifest, then
    ``latest``, once every file is written."""
    state = {
        **asdict(run.state),
        "monitor": run.monitor.state_dict(),
        "sampler": run.sampler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "stage": run.cfg.train.stage,
    }
    tag = f"step{run.state.step}"
    directory = run.out / CHECKPOINTS
    try:
        run.engine.save_checkpoint(str(directory), tag=tag, client_state=state, save_latest=False)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as a RuntimeError
        kept = latest_tag(directory) or "no checkpoint"
        raise CheckpointError(
            f"could not write checkpoint {directory / tag} "
            f"({str(exc).splitlines()[0]}); latest still names {kept}, intact"
        ) from None
    barrier()  # every rank's files are written
    if run.rank == 0:
        commit(directory, tag, run.state.step, run.run_id)
    barrier()


def load_checkpoint(run: Run) -> None:
    """The checkpoint ``run.resume_tag``: weights and optimizer into the engine; train state, monitor, sampler and
    RNG back as they were saved."""
    directory = run.out / CHECKPOINTS
    try:
        path, state = run.engine.load_checkpoint(str(directory), tag=run.resume_tag)
    except Exception as exc:  # noqa: BLE001 - DeepSpeed and torch.load raise many types for a bad file
        raise CheckpointError(
            f"--resume: DeepSpeed could not load {directory / run.resume_tag} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if path is None:
        raise CheckpointError(f"--resume: DeepSpeed could not load {directory / run.resume_tag}")
    if state.get("stage") != run.cfg.train.stage:
        raise ConfigError(
            f"--resume: {path} is a stage-{state.get('stage')} checkpoint; this run is stage {run.cfg.train.stage}"
        )
    run.state = TrainState(
        step=int(state["step"]),
        best=float(state["best"]),
        skipped=int(state.get("skipped", 0)),
        evals_since_best=int(state.get("evals_since_best", 0)),
    )
    run.monitor.load_state_dict(state.get("monitor", {}))
    run.sampler.load_state_dict(state["sampler"])
    torch.set_rng_state(state["torch_rng"])
    info(f"resumed from {path} at step {run.state.step}")


def export(run: Run, directory: Path, scores: dict[str, float] | None = None) -> None:
    """Consolidated, ep-size-independent model (safetensors + configs), tokenizer and model card, loadable with
    ``MTAModel.from_pretrained`` at any ep size; ``scores``: the validation scores the card lists."""
    state = gathered_state(run.model)  # every rank takes part; rank 0 gets all adapters
    if run.rank == 0:
        write_export(
            directory,
            run.model,
            state,
            run.tokenizer,
            run.data.registry,
            run.profiles,
            scores,
            run.state.step,
            card_source(run.cfg),
        )
    barrier()


def apply_unfreeze(run: Run) -> None:
    """Gradual unfreezing: switch the blocks whose turn has come (logged as ``unfreeze`` records)."""
    if run.unfreeze is None:
        return
    newly = run.unfreeze.apply(run.state.step, run.engine.optimizer)
    if newly:
        run.logger.log(
            "unfreeze",
            run.state.step,
            {"blocks": newly, "unfrozen": run.unfreeze.unfrozen, "of": len(run.unfreeze.units)},
        )
        info(
            f"step {run.state.step}: unfroze {', '.join(newly)} "
            f"({run.unfreeze.unfrozen}/{len(run.unfreeze.units)} blocks)"
        )
