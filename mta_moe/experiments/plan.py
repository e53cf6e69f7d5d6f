"""Which runs a comparison trains: one single-task model per task (at equal examples per task by default), a fully
shared model and a parameter-matched one, MTA after stage 1 and after stage 2 (and the shared model through the
same stage 2, and MTA stage 1 trained on for stage 2's steps), seeds and variants; each run's config derived from
the user's stage-1 / stage-2 configs."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import ConfigError
from ..names import child_path
from ..training.run_config import apply_overrides, build_run_config, set_config_key

BUDGETS = ("examples", "steps")
# per-task keys of the mta.data / mta.train sections that a single-task run keeps for its own task only
_PER_TASK_DATA = ("task_kinds", "type_overrides")
_PER_TASK_TRAIN = ("task_weights", "baseline_scores")


@dataclass
class Variant:
    """An extra run: MTA stage ``stage`` (1, or 2 from this comparison's stage 1) with ``overrides``
    (launcher-style ``["--train.weighting", '{"method": "uncertainty"}']``)."""

    name: str
    stage: int
    overrides: list[str]


@dataclass
class RunSpec:
    name: str
    raw: dict[str, Any]  # the whole config: DeepSpeed keys + "mta"
    single_task: str | None = None  # set for single-task baselines
    system: str | None = None  # the system this run is a seed of (None: itself)
    after: str | None = None  # the run whose export this one starts from


@dataclass
class Protocol:
    """How the comparison was budgeted (written into the report)."""

    single_task_budget: str = "examples"
    multi_task_steps: int = 0
    examples_per_task: dict[str, int] = field(default_factory=dict)
    single_task_steps: dict[str, int] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    matched: dict[str, str] = field(default_factory=dict)  # baseline name -> what it matches
    stage2: bool = False
    fixed_budget: int = 0  # the configured steps: the fixed-budget table's step
    patience: int | None = None  # early stopping of multi-task stage-1 runs (validations without a better macro)
    eval_every: int = 0
    best_checkpoint: bool = False  # scored at the best validation checkpoint (needs a validation split)

    def as_dict(self) -> dict[str, Any]:
        return {
            "single_task_budget": self.single_task_budget,
            "multi_task_steps": self.multi_task_steps,
            "examples_per_task": self.examples_per_task,
            "single_task_steps": self.single_task_steps,
            "seeds": self.seeds,
            "matched": self.matched,
            "stage2": self.stage2,
            "fixed_budget": self.fixed_budget,
            "patience": self.patience,
            "eval_every": self.eval_every,
            "best_checkpoint": self.best_checkpoint,
        }

    def stage1_changes(self) -> dict[str, Any]:
        """What every multi-task stage-1 run of the comparison sets: its step budget, validation cadence, early
        stopping and a snapshot at the fixed budget."""
        changes: dict[str, Any] = {
            "train.steps": self.multi_task_steps,
            "train.eval_every": self.eval_every,
            "train.early_stopping": None if self.patience is None else {"patience": self.patience},
        }
        if self.multi_task_steps > self.fixed_budget:
            changes["train.export_steps"] = [self.fixed_budget]
        return changes

    @property
    def start_from(self) -> str:
        """The export of a stage-1 run that its stage-2 runs start from."""
        return "best" if self.best_checkpoint else "export"


def shared_changes(stage1: Mapping[str, Any], adapter_dim: int | None = None) -> dict[str, Any]:
    """The fully shared model: one adapter that every sequence uses (``adapter_dim``: its width)."""
    changes: dict[str, Any] = {
        "mta.num_experts": 1,
        "mta.k": 1,
        "mta.ep_size": 1,
        "mta.route_by": "type",
        "mta.tasks": None,
        "mta.task_adapter_assignment": None,
        "mta.always_on_adapters": 0,
    }
    if adapter_dim is not None:
        changes["mta.adapter_dim"] = adapter_dim
    return changes


def plan_runs(
    stage1: dict[str, Any],
    stage2: dict[str, Any] | None,
    out: Path,
    temperatures: Sequence[float] = (),
    no_freeze: bool = False,
    variants: Sequence[Variant] = (),
    single_steps: Mapping[str, int] | None = None,
    seeds: Sequence[int] = (),
    tasks: Sequence[str] | None = None,
    protocol: Protocol | None = None,
) -> list[RunSpec]:
    """Every run the comparison needs, in the order they must run (a stage-2 run after its stage 1).
    ``single_steps``: steps of each task's single-task run (None: no single-task runs); ``tasks``: the tasks
    of the data (default: from the config's suite); ``protocol``: the multi-task runs' budget (default: the
    configured steps, no early stopping, stage 2 from stage 1's final export)."""
    run_cfg = build_run_config(stage1, "compare --config")
    mta = run_cfg.mta
    if protocol is None:
        protocol = Protocol(
            multi_task_steps=run_cfg.train.steps, fixed_budget=run_cfg.train.steps, eval_every=run_cfg.train.eval_every
        )
    runs: list[RunSpec] = []
    for task, steps in (single_steps or {}).items():
        runs.append(_single(stage1, task, steps, out))
    runs += _systems(stage1, stage2, out, mta, None, protocol)
    for seed in seeds:
        runs += _systems(stage1, stage2, out, mta, seed, protocol)
    start = str(out / "mta_stage1" / protocol.start_from)
    runs += [
        _derive(stage1, f"mta_stage1_T{t:g}", out, {**protocol.stage1_changes(), "mta.temperature": float(t)})
        for t in temperatures
    ]
    if stage2 is not None and no_freeze:
        lr = stage2.get("mta", {}).get("train", {}).get("lr", 1e-3)
        runs.append(
            _derive(
                stage2,
                "mta_stage2_nofreeze",
                out,
                {"train.init_from": start, "train.trainable": [{"pattern": "*", "lr": lr}]},
                after="mta_stage1",
            )
        )
    for variant in variants:
        if variant.stage == 2 and stage2 is None:
            raise ConfigError(f"compare: variant {variant.name} is a stage-2 run; pass --stage2")
        for seed in (None, *seeds):  # a variant is a system too: one run per seed
            runs.append(_variant_run(variant, stage1 if variant.stage == 1 else stage2, out, protocol, seed))
    names = [r.name for r in runs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(f"compare: two runs are named {clash[0]!r}; give the variant another name")
    return runs


def _variant_run(variant: Variant, base: dict[str, Any], out: Path, protocol: Protocol, seed: int | None) -> RunSpec:
    """One seed of a variant: stage 1 with the comparison's protocol, or stage 2 from that seed's MTA stage 1; then
    the variant's overrides."""
    suffix = "" if seed is None else f"_s{seed}"
    first = f"mta_stage1{suffix}"
    changes = (
        protocol.stage1_changes() if variant.stage == 1 else {"train.init_from": str(out / first / protocol.start_from)}
    )
    if seed is not None:
        changes.update({"train.seed": seed, "data.seed": seed})
    name = f"{variant.name}{suffix}"
    spec = _derive(base, name, out, changes, system=variant.name, after=None if variant.stage == 1 else first)
    apply_overrides(spec.raw, variant.overrides)
    if spec.raw["mta"]["train"]["output_dir"] != str(out / name):
        raise ConfigError(f"compare: variant {variant.name} may not change train.output_dir")
    return spec


def matched_baselines(mta) -> dict[str, tuple[int, str]]:
    """Parameter-matched shared models for an MTA config with bottleneck adapters: name -> (adapter width,
    what it matches). ``shared_matched``: one adapter as wide as the k adapters a sequence uses together;
    ``shared_wide``: one adapter with as many parameters as all the MTA adapters of a layer (always-on adapters
    counted in both)."""
    if mta.expert_kind != "bottleneck":
        return {}
    on = mta.always_on_adapters * (mta.always_on_dim or mta.adapter_dim)
    plus, plus_all = ("", "") if not on else (f" + {on} always-on", f" and {mta.always_on_adapters} always-on")
    out = {}
    if mta.top_k > 1 or (on and mta.num_experts > 1):
        width = mta.top_k * mta.adapter_dim + on
        out["shared_matched"] = (width, f"one adapter of width k × r{plus} = {width} (the adapters a sequence uses)")
    if mta.num_experts > mta.top_k:
        width = mta.num_experts * mta.adapter_dim + on
        out["shared_wide"] = (width, f"one adapter of width E × r{plus} = {width} (all task adapters{plus_all})")
    return out


def _systems(
    stage1: dict[str, Any], stage2: dict[str, Any] | None, out: Path, mta, seed: int | None, protocol: Protocol
) -> list[RunSpec]:
    suffix = "" if seed is None else f"_s{seed}"
    extra = {**protocol.stage1_changes(), **({} if seed is None else {"train.seed": seed, "data.seed": seed})}
    runs = [_derive(stage1, f"shared{suffix}", out, {**shared_changes(stage1), **extra}, system="shared")]
    for name, (width, _) in matched_baselines(mta).items():
        runs.append(_derive(stage1, f"{name}{suffix}", out, {**shared_changes(stage1, width), **extra}, system=name))
    runs.append(_derive(stage1, f"mta_stage1{suffix}", out, extra, system="mta_stage1"))
    if stage2 is not None:
        seeded = {} if seed is None else {"train.seed": seed, "data.seed": seed}
        for first, second in (
            (f"mta_stage1{suffix}", "mta_stage2"),
            (f"shared{suffix}", "shared_stage2"),
            (f"mta_stage1{suffix}", "mta_stage1_more"),
        ):
            init = {"train.init_from": str(out / first / protocol.start_from), **seeded}
            if second == "shared_stage2":  # the shared model's layer keys come from its own export
                init.update(
                    {
                        "mta.num_experts": 1,
                        "mta.k": 1,
                        "mta.route_by": "type",
                        "mta.tasks": None,
                        "mta.task_adapter_assignment": None,
                        "mta.always_on_adapters": 0,
                    }
                )
            if second == "mta_stage1_more":  # stage 2's data, steps and schedule; stage 1's parts, all trainable
                init.update({"train.stage": 1, "train.trainable": None})
            runs.append(_derive(stage2, f"{second}{suffix}", out, init, system=second, after=first))
    return runs


def _single(stage1: dict[str, Any], task: str, steps: int, out: Path) -> RunSpec:
    """``task`` alone on the shared architecture, ``steps`` steps; per-task settings kept for ``task`` only."""
    train = stage1.get("mta", {}).get("train", {})
    changes: dict[str, Any] = {
        **shared_changes(stage1),
        "data.tasks": [task],
        "data.curriculum": None,
        "train.steps": steps,
        "train.eval_every": min(train.get("eval_every", steps), steps),
        "train.save_every": min(train.get("save_every", steps), steps),
        "train.warmup_steps": min(train.get("warmup_steps", 0), max(0, steps - 1)),
    }
    data = stage1.get("mta", {}).get("data", {})
    for key in _PER_TASK_DATA:
        if data.get(key):
            changes[f"data.{key}"] = {t: v for t, v in data[key].items() if t == task}
    caps = data.get("sampling", {}).get("caps") if isinstance(data.get("sampling"), Mapping) else None
    if caps:
        changes["data.sampling"] = {**data["sampling"], "caps": {t: v for t, v in caps.items() if t == task}}
    for key in _PER_TASK_TRAIN:
        if train.get(key):
            changes[f"train.{key}"] = {t: v for t, v in train[key].items() if t == task}
    return _derive(stage1, f"single_{task}", out, changes, single_task=task)


def _derive(
    base: dict[str, Any],
    name: str,
    out: Path,
    changes: dict[str, Any],
    single_task: str | None = None,
    system: str | None = None,
    after: str | None = None,
) -> RunSpec:
    """Run ``name``: ``base`` with ``changes`` (keys in the overrides' dialect, see ``set_config_key``)."""
    raw = copy.deepcopy(base)
    for key, value in {**changes, "train.output_dir": str(child_path(out, name))}.items():
        set_config_key(raw, key, value, f"compare run {name}: {key}")
    return RunSpec(name, raw, single_task, system, after)
