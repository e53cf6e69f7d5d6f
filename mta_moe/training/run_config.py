"""One run's configuration: a DeepSpeed JSON whose ``"mta"`` section holds the layer keys plus
``model``, ``data`` and ``train`` subsections (``ModelConfig`` and ``TrainConfig`` live in train_config); dotted
command-line overrides; checks that name the key."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import RUN_SECTIONS as SUBSECTIONS
from ..config import ConfigError, MTAConfig, check_int, reject_nonfinite
from ..config_files import read_config_file
from ..data.config import DataConfig
from ..deepspeed_keys import KNOWN_TOP_LEVEL, unknown_key_message
from ..typed_config import build_section, check_known_tasks
from .train_checks import check_projection
from .train_config import ModelConfig, TrainConfig


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
        return {
            **self.ds,
            "mta": {
                **self.mta.to_dict(),
                "model": dataclasses.asdict(self.model),
                "data": self.data.to_dict(),
                "train": dataclasses.asdict(self.train),
            },
        }

    def check_task_names(self, names: Sequence[str]) -> None:
        """The training settings keyed by task name name tasks of the data (run by ``load_task_data`` before
        anything is generated or tokenised, beside its own checks of the data settings)."""
        check_known_tasks(self.train.task_weights, names, "mta.train.task_weights")
        check_known_tasks(self.train.baseline_scores, names, "mta.train.baseline_scores")


def build_run_config(raw: Mapping[str, Any], source: str = "<dict>") -> RunConfig:
    """Validate a whole config dict (DeepSpeed keys + ``mta``); errors start with ``source``."""
    try:
        reject_nonfinite(raw)
        ds = {k: v for k, v in raw.items() if k != "mta"}
        section = dict(raw.get("mta", {}))
        sub = {name: section.pop(name, {}) for name in SUBSECTIONS}
        mta = MTAConfig.from_dict(section)
        model_raw = sub["model"]
        if (
            isinstance(model_raw, Mapping) and model_raw.get("backbone") is not None and "from_scratch" not in model_raw
        ):  # a backbone replaces the default from-scratch model
            model_raw = {**model_raw, "from_scratch": None}
        model = build_section(ModelConfig, model_raw)
        data = DataConfig.from_dict(sub["data"])
        train = build_section(TrainConfig, sub["train"])
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
                raise ConfigError(
                    f"mta.data.type_overrides.{task}: type {kind!r} is not in mta.task_types {mta.task_types}"
                )
        train_keys = frozenset(sub["train"]) if isinstance(sub["train"], Mapping) else frozenset()
        if "scheduler" in ds and "warmup_steps" in train_keys:
            raise ConfigError(
                'mta.train.warmup_steps: the DeepSpeed "scheduler" section sets the learning-rate '
                "schedule; remove warmup_steps (or the scheduler section, for the trainer's own warm-up "
                "and linear decay)"
            )
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
            raise ConfigError(f"{shown}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    if len(parts) == 1 and parts[0] not in raw:
        raise ConfigError(
            f"{shown}: unknown DeepSpeed key (not in the config); our keys are under mta., model., data., train."
        )
    node[parts[-1]] = value


def _check_deepspeed(ds: Mapping[str, Any], mta: MTAConfig) -> None:
    unknown = sorted(k for k in ds if k not in KNOWN_TOP_LEVEL)
    if unknown:
        raise ConfigError(unknown_key_message(unknown[0]))
    zero = ds.get("zero_optimization", {})
    stage = zero.get("stage", 0) if isinstance(zero, Mapping) else None
    if stage not in (0, 1, 2):
        if stage == 3:
            raise ConfigError(
                "zero_optimization.stage: 3 is refused by DeepSpeed for MoE layers (the MTA "
                "adapters are MoE experts); use ZeRO stage 1 or 2"
            )
        raise ConfigError(f"zero_optimization.stage: must be 0, 1 or 2, got {stage!r}")
    if stage == 2 and zero.get("reduce_scatter", True) is not True:
        raise ConfigError(
            "zero_optimization.reduce_scatter: must be true (or left out) at ZeRO stage 2: "
            "DeepSpeed supports MoE layers (the MTA adapters) only with reduce-scatter"
        )
    if stage == 2 and zero.get("contiguous_gradients", True) is not True:
        raise ConfigError(
            "zero_optimization.contiguous_gradients: must be true (or left out) at ZeRO stage 2: "
            "DeepSpeed supports MoE layers (the MTA adapters) only with contiguous gradients"
        )
    if "optimizer" in ds:
        raise ConfigError(
            "optimizer: leave it out; the trainer builds AdamW over the configured parameter "
            "groups (mta.train.lr / mta.train.trainable)"
        )
    check_int(ds.get("train_micro_batch_size_per_gpu"), "train_micro_batch_size_per_gpu", 1)
    if ds.get("zero_allow_untested_optimizer", True) is not True and stage in (1, 2):
        raise ConfigError(
            "zero_allow_untested_optimizer: must be true (or left out) under ZeRO: the trainer's "
            "optimizer is torch's AdamW over its parameter groups, which DeepSpeed calls untested"
        )
    _check_monitors(ds)


def _check_skipping(ds: Mapping[str, Any], train: "TrainConfig") -> None:
    if train.skip_nonfinite_batches and ds.get("gradient_accumulation_steps", 1) != 1:
        raise ConfigError(
            "mta.train.skip_nonfinite_batches: needs gradient_accumulation_steps 1 (a step's earlier "
            "micro-batches would already have accumulated their gradients); set one of them back"
        )


def _check_monitors(ds: Mapping[str, Any]) -> None:
    """DeepSpeed's monitor sections: objects with a boolean ``enabled``; wandb and comet need their package."""
    import importlib.util

    from .logger import MONITOR_PACKAGES, MONITORS

    for name in MONITORS:
        if name not in ds:
            continue
        section = ds[name]
        if not isinstance(section, Mapping):
            raise ConfigError(f'{name}: expected an object like {{"enabled": true, ...}}, got {section!r}')
        enabled = section.get("enabled", False)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{name}.enabled: expected true or false, got {enabled!r}")
        package = MONITOR_PACKAGES.get(name)
        if enabled and package and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"{name}.enabled: true needs the {package} package, which is not installed "
                f"(pip install {package}), or set {name}.enabled to false"
            )
