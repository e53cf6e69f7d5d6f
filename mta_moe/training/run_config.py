"""One run's configuration: a DeepSpeed JSON whose ``"mta"`` section holds the layer keys plus
``model``, ``data`` and ``train`` subsections; dotted command-line overrides; checks that name the key."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import RUN_SECTIONS as SUBSECTIONS
from ..config import ConfigError, MTAConfig, check_int, reject_nonfinite, reject_unknown_keys
from ..config_files import read_config_file
from ..data.config import DataConfig
from ..deepspeed_keys import KNOWN_TOP_LEVEL, unknown_key_message
from .train_checks import REDUCTIONS, check_projection, check_unfreeze, check_weighting

TOKENIZERS = ("backbone", "sentencepiece")


@dataclass
class ModelConfig:
    """``backbone``: a hub name or local directory of pretrained weights (the default ``from_scratch`` then
    steps aside), or null with ``from_scratch`` (a ``transformers`` config dict with ``model_type``) for a
    randomly initialised model.
    ``tokenizer``: ``backbone`` (the backbone's own) or ``sentencepiece`` (trained on the training text)."""

    backbone: str | None = None
    from_scratch: dict[str, Any] | None = field(default_factory=lambda: {
        "model_type": "t5", "d_model": 128, "d_ff": 256, "num_layers": 3, "num_decoder_layers": 2,
        "num_heads": 4, "d_kv": 32, "dropout_rate": 0.0})
    tokenizer: str = "sentencepiece"
    vocab_size: int = 1000

    def validate(self, key: str = "mta.model") -> None:
        if (self.backbone is None) == (self.from_scratch is None):
            raise ConfigError(f"{key}: set exactly one of backbone (a hub name or directory) and from_scratch")
        if self.backbone is not None and (not isinstance(self.backbone, str) or not self.backbone):
            raise ConfigError(f"{key}.backbone: must be a hub name or a directory, got {self.backbone!r}")
        if self.from_scratch is not None and (not isinstance(self.from_scratch, Mapping)
                                              or not isinstance(self.from_scratch.get("model_type"), str)):
            raise ConfigError(f"{key}.from_scratch: must be a transformers config object with a model_type")
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError(f"{key}.tokenizer: must be one of {list(TOKENIZERS)}, got {self.tokenizer!r}")
        if self.tokenizer == "backbone" and self.backbone is None:
            raise ConfigError(f"{key}.tokenizer: 'backbone' needs mta.model.backbone; a from-scratch model "
                              f"uses 'sentencepiece'")
        check_int(self.vocab_size, f"{key}.vocab_size", 16)


@dataclass
class TrainConfig:
    """One stage of training. ``trainable`` (stage 2): ``[{"pattern": glob, "lr": x}]`` over parameter
    names; every parameter no pattern matches is frozen."""

    stage: int = 1
    steps: int = 600
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 30
    seed: int = 0
    output_dir: str = "runs/demo"
    # stage 2: the stage-1 export directory; stage 1: a stage-1 export to train on (the same parts, a new optimizer)
    init_from: str | None = None
    trainable: list[dict[str, Any]] | None = None
    stop_at_step: int | None = None  # end this run early (as a time-limited job would); resume later
    # stop once the validation macro has not improved for ``patience`` validations in a row (by more than
    # ``min_delta``): {"patience": int >= 1, "min_delta": number >= 0 (default 0)}; null: train all steps
    early_stopping: dict[str, Any] | None = None
    # steps at which the model is also exported (to export_step<N>/), e.g. a fixed budget inside a longer run
    export_steps: list[int] = field(default_factory=list)
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 200
    eval_batch_size: int = 64
    max_new_tokens: int = 24
    loss_reduction: str = "token"  # token | sequence | task (see mta_moe.training.losses)
    task_weights: dict[str, float] = field(default_factory=dict)  # static per-task loss weights
    warn_margin: float = 0.05  # warn when a task's validation score drops this far below its best / baseline
    baseline_scores: dict[str, float] = field(default_factory=dict)  # known single-task scores, {task: score}
    weighting: dict[str, Any] | None = None  # dynamic task weights (see mta_moe.training.task_balance)
    gradient_projection: str | None = None  # "pcgrad" (see mta_moe.training.gradient_projection)
    unfreeze: dict[str, int] | None = None  # gradual unfreezing (see mta_moe.training.unfreezing)
    # add the task types of mta.task_types that init_from lacks (see mta_moe.modeling.grow):
    # {"new_adapters": int (default 1), "warm_start": "closest" (default) | a trained type | null}
    add_task_types: dict[str, Any] | None = None
    # recompute each backbone block in backward instead of keeping its activations (MTAModel.activation_
    # checkpointing_enable: non-reentrant, task ids restored); less memory, about one more forward per step
    activation_checkpointing: bool = False
    # how long a collective (all-reduce, all-to-all, barrier) waits for a rank that stopped answering before the
    # run fails instead of hanging (PyTorch's default: 1800 s)
    distributed_timeout_s: float = 1800.0
    # batches whose loss is not finite that may be skipped (no backward, no optimizer step, logged) before the run
    # stops as diverged; 0: the first one stops it
    skip_nonfinite_batches: int = 0

    def validate(self, key: str = "mta.train") -> None:
        if self.stage not in (1, 2):
            raise ConfigError(f"{key}.stage: must be 1 or 2, got {self.stage!r}")
        for name in ("steps", "log_every", "eval_every", "save_every", "eval_batch_size", "max_new_tokens"):
            check_int(getattr(self, name), f"{key}.{name}", 1)
        check_int(self.warmup_steps, f"{key}.warmup_steps", 0)
        if self.stop_at_step is not None:
            check_int(self.stop_at_step, f"{key}.stop_at_step", 1)
        check_int(self.seed, f"{key}.seed", 0)
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or \
                    (name == "lr" and value == 0):
                raise ConfigError(f"{key}.{name}: must be a number {'> 0' if name == 'lr' else '>= 0'}, got {value!r}")
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ConfigError(f"{key}.output_dir: must be a directory path, got {self.output_dir!r}")
        if self.loss_reduction not in REDUCTIONS:
            raise ConfigError(f"{key}.loss_reduction: must be one of {list(REDUCTIONS)}, got {self.loss_reduction!r}")
        for section in ("task_weights", "baseline_scores"):
            value = getattr(self, section)
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}.{section}: must be an object {{task: number}}, got {value!r}")
        for section in ("task_weights", "baseline_scores"):
            for name, value in getattr(self, section).items():
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                    raise ConfigError(f"{key}.{section}.{name}: must be a number >= 0, got {value!r}")
        if not isinstance(self.warn_margin, (int, float)) or isinstance(self.warn_margin, bool) or self.warn_margin < 0:
            raise ConfigError(f"{key}.warn_margin: must be a number >= 0, got {self.warn_margin!r}")
        if not isinstance(self.distributed_timeout_s, (int, float)) or isinstance(self.distributed_timeout_s, bool) \
                or self.distributed_timeout_s <= 0:
            raise ConfigError(f"{key}.distributed_timeout_s: must be a number of seconds > 0, got "
                              f"{self.distributed_timeout_s!r}")
        check_int(self.skip_nonfinite_batches, f"{key}.skip_nonfinite_batches", 0)
        if not isinstance(self.activation_checkpointing, bool):
            raise ConfigError(f"{key}.activation_checkpointing: must be true or false, got "
                              f"{self.activation_checkpointing!r}")
        self._validate_early_stopping(key)
        if not isinstance(self.export_steps, list):
            raise ConfigError(f"{key}.export_steps: must be a list of step numbers, got {self.export_steps!r}")
        for i, step in enumerate(self.export_steps):
            check_int(step, f"{key}.export_steps[{i}]", 1)
        check_weighting(self.weighting, self.loss_reduction, f"{key}.weighting")
        check_unfreeze(self.unfreeze, self.stage, self.trainable, f"{key}.unfreeze")
        if self.stage == 2 and not self.init_from:
            raise ConfigError(f"{key}.init_from: stage 2 starts from the stage-1 export; set it to that directory")
        self._validate_add_task_types(key)
        if self.trainable is not None:
            if not isinstance(self.trainable, list) or not self.trainable:
                raise ConfigError(f"{key}.trainable: must be a non-empty list of {{pattern, lr}} or null")
            for i, group in enumerate(self.trainable):
                where = f"{key}.trainable[{i}]"
                if not isinstance(group, Mapping) or set(group) - {"pattern", "lr", "weight_decay", "optional"} \
                        or not isinstance(group.get("pattern"), str) \
                        or not isinstance(group.get("optional", False), bool):
                    raise ConfigError(f"{where}: must be {{\"pattern\": glob, \"lr\": number, "
                                      f"\"weight_decay\": number (optional), \"optional\": true | false (a pattern "
                                      f"that may match nothing)}}, got {group!r}")
                lr = group.get("lr", self.lr)
                if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
                    raise ConfigError(f"{where}.lr: must be a number > 0, got {lr!r}")


    def _validate_early_stopping(self, key: str) -> None:
        spec = self.early_stopping
        if spec is None:
            return
        where = f"{key}.early_stopping"
        if not isinstance(spec, Mapping) or set(spec) - {"patience", "min_delta"} or "patience" not in spec:
            raise ConfigError(f"{where}: must be {{\"patience\": int >= 1, \"min_delta\": number >= 0}} or null, "
                              f"got {spec!r}")
        check_int(spec["patience"], f"{where}.patience", 1)
        delta = spec.get("min_delta", 0.0)
        if not isinstance(delta, (int, float)) or isinstance(delta, bool) or not 0 <= delta < 1:
            raise ConfigError(f"{where}.min_delta: must be a number in [0, 1), got {delta!r}")

    def _validate_add_task_types(self, key: str) -> None:
        spec = self.add_task_types
        if spec is None:  # (a stage-1 run with init_from continues that stage-1 export: every part trains on)
            return
        where = f"{key}.add_task_types"
        if not isinstance(spec, Mapping) or set(spec) - {"new_adapters", "warm_start"}:
            raise ConfigError(f"{where}: must be {{\"new_adapters\": int, \"warm_start\": \"closest\" | task type | "
                              f"null}}, got {spec!r}")
        check_int(spec.get("new_adapters", 1), f"{where}.new_adapters", 0)
        warm = spec.get("warm_start", "closest")
        if warm is not None and (not isinstance(warm, str) or not warm):
            raise ConfigError(f"{where}.warm_start: must be 'closest', a trained task type or null, got {warm!r}")
        if not self.init_from:
            raise ConfigError(f"{where}: set mta.train.init_from to the trained export the task types are added to")
        if self.trainable is not None or self.unfreeze is not None:
            raise ConfigError(f"{where}: trains only the new adapters and bias rows; leave trainable and unfreeze "
                              f"null")


@dataclass
class RunConfig:
    """The DeepSpeed keys and our sections, validated together."""

    ds: dict[str, Any]
    mta: MTAConfig
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    source: str = "<dict>"
    mta_keys: frozenset[str] = frozenset()  # the layer keys set in the file or by overrides (not defaults)
    train_keys: frozenset[str] = frozenset()  # the mta.train keys set in the file or by overrides

    def to_json(self) -> dict[str, Any]:
        """The full resolved config (DeepSpeed keys plus the complete ``mta`` section)."""
        return {**self.ds, "mta": {**self.mta.to_dict(), "model": dataclasses.asdict(self.model),
                                   "data": self.data.to_dict(), "train": dataclasses.asdict(self.train)}}

    def check_task_names(self, names: Sequence[str]) -> None:
        """The training settings keyed by task name name tasks of the data (run by ``load_task_data`` before
        anything is generated or tokenised, beside its own checks of the data settings)."""
        for key, mapping in (("mta.train.task_weights", self.train.task_weights),
                             ("mta.train.baseline_scores", self.train.baseline_scores)):
            unknown = sorted(set(mapping) - set(names))
            if unknown:
                raise ConfigError(f"{key}.{unknown[0]}: unknown task; tasks in the data: {list(names)}")


def build_run_config(raw: Mapping[str, Any], source: str = "<dict>") -> RunConfig:
    """Validate a whole config dict (DeepSpeed keys + ``mta``); errors start with ``source``."""
    try:
        reject_nonfinite(raw)
        ds = {k: v for k, v in raw.items() if k != "mta"}
        section = dict(raw.get("mta", {}))
        sub = {name: section.pop(name, {}) for name in SUBSECTIONS}
        mta = MTAConfig.from_dict(section)
        model_raw = sub["model"]
        if isinstance(model_raw, Mapping) and model_raw.get("backbone") is not None \
                and "from_scratch" not in model_raw:  # a backbone replaces the default from-scratch model
            model_raw = {**model_raw, "from_scratch": None}
        model = _dataclass(ModelConfig, model_raw, "mta.model")
        data = DataConfig.from_dict(sub["data"])
        train = _dataclass(TrainConfig, sub["train"], "mta.train")
        _check_deepspeed(ds, mta)
        _check_skipping(ds, train)
        check_projection(train.gradient_projection, ds, mta.ep_size)
        mta_types = set(mta.task_types)
        for recipe in data.recipes:
            kind = recipe.get("type")
            if kind is not None and kind not in mta_types:
                raise ConfigError(f"mta.data.recipes: type {kind!r} is not in mta.task_types {mta.task_types}")
        for task, kind in data.type_overrides.items():
            if kind not in mta_types:
                raise ConfigError(f"mta.data.type_overrides.{task}: type {kind!r} is not in mta.task_types "
                                  f"{mta.task_types}")
        train_keys = frozenset(sub["train"]) if isinstance(sub["train"], Mapping) else frozenset()
        if "scheduler" in ds and "warmup_steps" in train_keys:
            raise ConfigError("mta.train.warmup_steps: the DeepSpeed \"scheduler\" section sets the learning-rate "
                              "schedule; remove warmup_steps (or the scheduler section, for the trainer's own warm-up "
                              "and linear decay)")
        return RunConfig(ds, mta, model, data, train, source, frozenset(section), train_keys)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a DeepSpeed JSON with an ``mta`` section and apply ``--key value`` overrides."""
    path = Path(path)
    raw = read_config_file(path)
    apply_overrides(raw, overrides)
    return build_run_config(raw, str(path))


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> None:
    """``["--mta.k", "2", "--train.steps=500", "--train_micro_batch_size_per_gpu", "4"]``: dotted keys;
    ``model.`` / ``data.`` / ``train.`` are short for ``mta.model.`` etc. Values are JSON (a bare word is a
    string). The key must exist in the config or among the section's known keys (checked on validation)."""
    items = list(overrides)
    i = 0
    while i < len(items):
        key = items[i]
        if not key.startswith("--"):
            raise ConfigError(f"override {key!r}: expected --key value")
        key = key[2:]
        if "=" in key:
            key, text = key.split("=", 1)
            i += 1
        elif i + 1 < len(items):
            text = items[i + 1]
            i += 2
        else:
            raise ConfigError(f"override --{key}: missing a value")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        set_config_key(raw, key, value, f"override --{key}")


def set_config_key(raw: dict[str, Any], key: str, value: Any, shown: str | None = None) -> None:
    """Set one dotted ``key`` of a raw config, in the dialect of the ``--key value`` overrides (the one dialect of
    ``train``, ``compare`` and its derived runs): ``mta.k``; ``model.`` / ``data.`` / ``train.`` short for
    ``mta.model.`` etc.; a bare key is a DeepSpeed key and must already be in the config. ``shown``: how errors
    name the key."""
    shown = shown or key
    parts = key.split(".")
    if parts[0] in SUBSECTIONS:
        parts = ["mta", *parts]
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{shown}: {'.'.join(parts[:depth + 1])} is not a section")
        node = child
    if len(parts) == 1 and parts[0] not in raw:
        raise ConfigError(f"{shown}: unknown DeepSpeed key (not in the config); "
                          f"our keys are under mta., model., data., train.")
    node[parts[-1]] = value


def _check_deepspeed(ds: Mapping[str, Any], mta: MTAConfig) -> None:
    unknown = sorted(k for k in ds if k not in KNOWN_TOP_LEVEL)
    if unknown:
        raise ConfigError(unknown_key_message(unknown[0]))
    zero = ds.get("zero_optimization", {})
    stage = zero.get("stage", 0) if isinstance(zero, Mapping) else None
    if stage not in (0, 1, 2):
        if stage == 3:
            raise ConfigError("zero_optimization.stage: 3 is refused by DeepSpeed for MoE layers (the MTA "
                              "adapters are MoE experts); use ZeRO stage 1 or 2")
        raise ConfigError(f"zero_optimization.stage: must be 0, 1 or 2, got {stage!r}")
    if stage == 2 and zero.get("reduce_scatter", True) is not True:
        raise ConfigError("zero_optimization.reduce_scatter: must be true (or left out) at ZeRO stage 2: "
                          "DeepSpeed supports MoE layers (the MTA adapters) only with reduce-scatter")
    if stage == 2 and zero.get("contiguous_gradients", True) is not True:
        raise ConfigError("zero_optimization.contiguous_gradients: must be true (or left out) at ZeRO stage 2: "
                          "DeepSpeed supports MoE layers (the MTA adapters) only with contiguous gradients")
    if "optimizer" in ds:
        raise ConfigError("optimizer: leave it out; the trainer builds AdamW over the configured parameter "
                          "groups (mta.train.lr / mta.train.trainable)")
    check_int(ds.get("train_micro_batch_size_per_gpu"), "train_micro_batch_size_per_gpu", 1)
    if ds.get("zero_allow_untested_optimizer", True) is not True and stage in (1, 2):
        raise ConfigError("zero_allow_untested_optimizer: must be true (or left out) under ZeRO: the trainer's "
                          "optimizer is torch's AdamW over its parameter groups, which DeepSpeed calls untested")
    _check_monitors(ds)


def _check_skipping(ds: Mapping[str, Any], train: "TrainConfig") -> None:
    if train.skip_nonfinite_batches and ds.get("gradient_accumulation_steps", 1) != 1:
        raise ConfigError("mta.train.skip_nonfinite_batches: needs gradient_accumulation_steps 1 (a step's earlier "
                          "micro-batches would already have accumulated their gradients); set one of them back")


def _check_monitors(ds: Mapping[str, Any]) -> None:
    """DeepSpeed's monitor sections: objects with a boolean ``enabled``; wandb and comet need their package."""
    import importlib.util

    from .logger import MONITOR_PACKAGES, MONITORS

    for name in MONITORS:
        if name not in ds:
            continue
        section = ds[name]
        if not isinstance(section, Mapping):
            raise ConfigError(f"{name}: expected an object like {{\"enabled\": true, ...}}, got {section!r}")
        enabled = section.get("enabled", False)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{name}.enabled: expected true or false, got {enabled!r}")
        package = MONITOR_PACKAGES.get(name)
        if enabled and package and importlib.util.find_spec(package) is None:
            raise ConfigError(f"{name}.enabled: true needs the {package} package, which is not installed "
                              f"(pip install {package}), or set {name}.enabled to false")


def _dataclass(cls, raw: Any, key: str):
    reject_unknown_keys(raw, [f.name for f in dataclasses.fields(cls)], key)
    value = cls(**raw)
    value.validate(key)
    return value
