"""The ``mta.model`` and ``mta.train`` sections: typed fields (type, bounds, description on each) and the checks
between them. The values that stay plain objects in the config (``trainable`` groups, ``early_stopping``,
``weighting``, ...) are TypedDicts, checked as strictly as the sections."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, with_config
from typing_extensions import Required, TypedDict

from ..typed_config import SECTION, ConfigError, check_section, setting, typed_section
from .train_checks import PROJECTIONS, REDUCTIONS, WEIGHTING_METHODS, WEIGHTING_OPTIONS

TOKENIZERS = ("backbone", "sentencepiece")
_Path = Annotated[str, Field(min_length=1)]
_Positive = Annotated[float, Field(gt=0)]
_NonNegative = Annotated[float, Field(ge=0)]


@with_config(SECTION)
class TrainableGroup(TypedDict, total=False):
    """One ``mta.train.trainable`` entry: the parameters whose names match ``pattern`` train (first match wins)."""

    pattern: Required[Annotated[str, Field(description="a glob over parameter names")]]
    lr: Annotated[float, Field(gt=0, description="the group's learning rate (default: mta.train.lr)")]
    weight_decay: Annotated[float, Field(ge=0, description="the group's weight decay")]
    optional: Annotated[bool, Field(description="true: the pattern may match no parameter")]


@with_config(SECTION)
class EarlyStopping(TypedDict, total=False):
    """``mta.train.early_stopping``: stop after ``patience`` validations without a macro better by ``min_delta``."""

    patience: Required[Annotated[int, Field(ge=1, description="validations without improvement")]]
    min_delta: Annotated[float, Field(ge=0, lt=1, description="the improvement that counts")]


@with_config(SECTION)
class TaskWeighting(TypedDict, total=False):
    """``mta.train.weighting``: dynamic task weights (``mta_moe.training.task_balance``); each method takes only
    its own options."""

    method: Required[Annotated[Literal[WEIGHTING_METHODS], Field(description="the weighting")]]  # type: ignore
    lr: Annotated[float, Field(gt=0, description="uncertainty, gradnorm: the weights' learning rate")]
    rate: Annotated[float, Field(gt=0, description="validation: how sharply weights follow the gap")]
    max_weight: Annotated[float, Field(ge=1, description="validation: the largest weight")]
    alpha: Annotated[float, Field(gt=0, description="gradnorm: the restoring force")]
    parameter: Annotated[str | None, Field(description="gradnorm: a glob naming the shared parameters")]


@with_config(SECTION)
class Unfreezing(TypedDict, total=False):
    """``mta.train.unfreeze``: gradual unfreezing, one more block every ``every`` steps from ``start_step``."""

    every: Required[Annotated[int, Field(ge=1, description="steps between two unfrozen blocks")]]
    start_step: Annotated[int, Field(ge=0, description="the step of the first")]


@with_config(SECTION)
class AddTaskTypes(TypedDict, total=False):
    """``mta.train.add_task_types``: grow a trained export by the task types of ``mta.task_types`` it lacks."""

    new_adapters: Annotated[int, Field(ge=0, description="adapters added per new task type (default 1)")]
    warm_start: Annotated[_Path | None, Field(description="'closest' (default), a trained task type or null")]


@typed_section("mta.model")
class ModelConfig:
    """The backbone: pretrained (``backbone``) or randomly initialised (``from_scratch``), and its tokenizer."""

    backbone: _Path | None = setting(
        None,
        "a hub name or local directory of pretrained weights (the default `from_scratch` then steps aside)",
        must="a hub name or a directory",
    )
    from_scratch: dict[str, Any] | None = setting(
        {
            "model_type": "t5",
            "d_model": 128,
            "d_ff": 256,
            "num_layers": 3,
            "num_decoder_layers": 2,
            "num_heads": 4,
            "d_kv": 32,
            "dropout_rate": 0.0,
        },
        "a `transformers` config with `model_type`, randomly initialised (the default: a small T5, d 128, "
        "3 encoder / 2 decoder blocks)",
        must="a transformers config object with a model_type",
    )
    tokenizer: Literal[TOKENIZERS] = setting(  # type: ignore[valid-type]
        "sentencepiece", "`backbone` (the backbone's own) or `sentencepiece` (trained on the training text)"
    )
    vocab_size: int = setting(1000, "the sentencepiece vocabulary size", ge=16)

    def __post_init__(self) -> None:
        if (self.backbone is None) == (self.from_scratch is None):
            raise ConfigError("mta.model: set exactly one of backbone (a hub name or directory) and from_scratch")
        if self.from_scratch is not None and not isinstance(self.from_scratch.get("model_type"), str):
            raise ConfigError("mta.model.from_scratch: must be a transformers config object with a model_type")
        if self.tokenizer == "backbone" and self.backbone is None:
            raise ConfigError(
                "mta.model.tokenizer: 'backbone' needs mta.model.backbone; a from-scratch model uses 'sentencepiece'"
            )

    def validate(self) -> None:
        """Check the fields again (after some were set by hand)."""
        check_section(self)


@typed_section("mta.train")
class TrainConfig:
    """One stage of training; every parameter no ``trainable`` pattern matches is frozen."""

    stage: int = setting(
        1,
        "1: task adapters (and the backbone unless frozen); 2: shared adapters and the gate "
        "network on the stage-1 export",
        ge=1,
        le=2,
        must="1 or 2",
    )
    steps: int = setting(600, "optimizer steps", ge=1)
    lr: float = setting(2e-3, "learning rate", gt=0)
    weight_decay: float = setting(0.01, "AdamW weight decay", ge=0)
    warmup_steps: int = setting(
        30,
        'linear warm-up, then linear decay to 10 %; a DeepSpeed `"scheduler"` section (`WarmupLR`, '
        "`WarmupDecayLR`, `WarmupCosineLR`, `OneCycle`) replaces this schedule and is built by DeepSpeed over the "
        "trainer's optimizer; `warmup_steps` beside it is refused",
        ge=0,
    )
    seed: int = setting(0, "seed of the run (initialisation, dropout, data order)", ge=0)
    output_dir: _Path = setting("runs/demo", "the run directory", must="a directory path")
    init_from: _Path | None = setting(
        None,
        "stage 2: the stage-1 export; stage 1: a stage-1 export trained on with every part trainable and a new "
        "optimizer",
        must="an export directory or null",
    )
    trainable: list[TrainableGroup] | None = setting(
        None,
        '`[{"pattern", "lr", "weight_decay", "optional"}]`: first match wins; `"optional": true` lets '
        "a pattern match nothing; null: every parameter trains (stage 1)",
        min_length=1,
        must="a non-empty list of {pattern, lr} or null",
    )
    stop_at_step: int | None = setting(None, "end this run early (as a time-limited job would); resume later", ge=1)
    early_stopping: EarlyStopping | None = setting(
        None,
        '`{"patience": n, "min_delta": x}`: stop after n validations without a macro better by more than x; '
        "the run ends as finished, with its checkpoint and export",
        must='{"patience": int >= 1, "min_delta": number >= 0} or null',
    )
    export_steps: list[Annotated[int, Field(ge=1)]] = setting(
        [], "steps at which the model is also exported (to `export_step<N>/`)", must="a list of step numbers"
    )
    log_every: int = setting(10, "steps between two log records", ge=1)
    eval_every: int = setting(200, "steps between two validations", ge=1)
    save_every: int = setting(200, "steps between two checkpoints", ge=1)
    eval_batch_size: int = setting(64, "validation batch size", ge=1)
    max_new_tokens: int = setting(24, "generation length at validation", ge=1)
    loss_reduction: Literal[REDUCTIONS] = setting(  # type: ignore[valid-type]
        "token", "how token losses are averaged: over the batch's `token`s, per `sequence`, or per `task`"
    )
    task_weights: dict[str, _NonNegative] = setting(
        {}, "`{task: weight}`: static per-task loss weights", must="an object {task: number}"
    )
    warn_margin: float = setting(
        0.05, "warn when a task's validation score drops this far below its best or its baseline", ge=0
    )
    baseline_scores: dict[str, _NonNegative] = setting(
        {}, "`{task: score}`: known single-task scores", must="an object {task: number}"
    )
    weighting: TaskWeighting | None = setting(
        None,
        'dynamic task weights: `{"method": "uncertainty" | "validation" | "gradnorm", options}` '
        "(*Negative-transfer levers*)",
        must=f'null or {{"method": one of {list(WEIGHTING_METHODS)}, ...}}',
    )
    gradient_projection: Literal[PROJECTIONS] | None = setting(  # type: ignore[valid-type]
        None, "`pcgrad`: per-task gradients projected off each other's conflicts (*Negative-transfer levers*)"
    )
    unfreeze: Unfreezing | None = setting(
        None,
        '`{"start_step": n, "every": m}`: gradual unfreezing of the backbone, top block first (stage 1)',
        must='null or {"start_step": int, "every": int}',
    )
    add_task_types: AddTaskTypes | None = setting(
        None,
        '`{"new_adapters": n, "warm_start": "closest" | task type | null}`: add the task types of '
        "`mta.task_types` that `init_from` lacks",
        must='{"new_adapters": int, "warm_start": "closest" | task type | null} or null',
    )
    activation_checkpointing: bool = setting(
        False,
        "`true`: each backbone block is recomputed in backward instead of keeping its activations (less "
        "memory for about one more forward per step); the recomputation runs under the call's own task ids, "
        "tested equal in loss and gradients on T5 and GPT-2",
    )
    distributed_timeout_s: float = setting(
        1800.0,
        "how long a collective waits for a rank that stopped answering before the run fails instead of "
        "hanging (*Reliability*)",
        gt=0,
        must="a number of seconds > 0",
    )
    skip_nonfinite_batches: int = setting(
        0,
        "batches whose loss is not finite that may be skipped (logged) before the run stops as diverged; 0: the "
        "first one stops it (*Reliability*)",
        ge=0,
    )

    def __post_init__(self) -> None:
        """The checks between fields."""
        if self.stage == 2 and not self.init_from:
            raise ConfigError("mta.train.init_from: stage 2 starts from the stage-1 export; set it to that directory")
        self._check_weighting()
        if self.unfreeze is not None and self.stage != 1:
            raise ConfigError(
                "mta.train.unfreeze: stage 2 keeps the backbone frozen; gradual unfreezing is a stage-1 schedule"
            )
        if self.unfreeze is not None and self.trainable is not None:
            raise ConfigError(
                "mta.train.unfreeze: cannot be combined with mta.train.trainable (which fixes what trains)"
            )
        if self.add_task_types is not None and not self.init_from:
            raise ConfigError(
                "mta.train.add_task_types: set mta.train.init_from to the trained export the task types are added to"
            )
        if self.add_task_types is not None and (self.trainable is not None or self.unfreeze is not None):
            raise ConfigError(
                "mta.train.add_task_types: trains only the new adapters and bias rows; leave trainable "
                "and unfreeze null"
            )

    def _check_weighting(self) -> None:
        if self.weighting is None:
            return
        method = self.weighting["method"]
        unknown = sorted(set(self.weighting) - {"method", *WEIGHTING_OPTIONS[method]})
        if unknown:
            raise ConfigError(
                f"mta.train.weighting.{unknown[0]}: not an option of {method!r}; "
                f"options: {sorted(WEIGHTING_OPTIONS[method])}"
            )
        if method == "uncertainty" and self.loss_reduction != "task":
            raise ConfigError(
                f"mta.train.weighting: uncertainty weighting is defined on per-task losses; set "
                f"mta.train.loss_reduction to 'task' (it is {self.loss_reduction!r})"
            )

    def validate(self) -> None:
        """Check the fields again (after some were set by hand)."""
        check_section(self)
