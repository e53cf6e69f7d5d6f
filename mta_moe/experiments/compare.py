"""Baselines and comparison on the same data and seed: one single-task model per task (at equal examples per
task by default), a fully shared model and a parameter-matched one, MTA after stage 1 and after stage 2 (and the
shared model through the same stage 2, and MTA stage 1 trained on for stage 2's steps), plus seeds and ablations;
finished runs whose resolved config matches are reused. Multi-task runs may train longer than the configured
budget with early stopping; the report scores every run at its best validation checkpoint and at the configured
budget, with paired tests against the shared model."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..config import ConfigError
from ..logs import get_logger
from ..names import child_path
from ..training.run_config import apply_overrides, build_run_config, set_config_key
from ..training.run_dir import in_use
from .budget import examples_per_task, single_task_steps

TRAIN_MODULE = ("-m", "mta_moe.cli", "train")
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
        return {"single_task_budget": self.single_task_budget, "multi_task_steps": self.multi_task_steps,
                "examples_per_task": self.examples_per_task, "single_task_steps": self.single_task_steps,
                "seeds": self.seeds, "matched": self.matched, "stage2": self.stage2,
                "fixed_budget": self.fixed_budget, "patience": self.patience, "eval_every": self.eval_every,
                "best_checkpoint": self.best_checkpoint}

    def stage1_changes(self) -> dict[str, Any]:
        """What every multi-task stage-1 run of the comparison sets: its step budget, validation cadence, early
        stopping and a snapshot at the fixed budget."""
        changes: dict[str, Any] = {"train.steps": self.multi_task_steps, "train.eval_every": self.eval_every,
                                   "train.early_stopping": None if self.patience is None else
                                   {"patience": self.patience}}
        if self.multi_task_steps > self.fixed_budget:
            changes["train.export_steps"] = [self.fixed_budget]
        return changes

    @property
    def start_from(self) -> str:
        """The export of a stage-1 run that its stage-2 runs start from."""
        return "best" if self.best_checkpoint else "export"


def shared_changes(stage1: Mapping[str, Any], adapter_dim: int | None = None) -> dict[str, Any]:
    """The fully shared model: one adapter that every sequence uses (``adapter_dim``: its width)."""
    changes: dict[str, Any] = {"mta.num_experts": 1, "mta.k": 1, "mta.ep_size": 1, "mta.route_by": "type",
                               "mta.tasks": None, "mta.task_adapter_assignment": None, "mta.always_on_adapters": 0}
    if adapter_dim is not None:
        changes["mta.adapter_dim"] = adapter_dim
    return changes


def plan_runs(stage1: dict[str, Any], stage2: dict[str, Any] | None, out: Path,
              temperatures: Sequence[float] = (), no_freeze: bool = False, variants: Sequence[Variant] = (),
              single_steps: Mapping[str, int] | None = None, seeds: Sequence[int] = (),
              tasks: Sequence[str] | None = None, protocol: Protocol | None = None) -> list[RunSpec]:
    """Every run the comparison needs, in the order they must run (a stage-2 run after its stage 1).
    ``single_steps``: steps of each task's single-task run (None: no single-task runs); ``tasks``: the tasks
    of the data (default: from the config's suite); ``protocol``: the multi-task runs' budget (default: the
    configured steps, no early stopping, stage 2 from stage 1's final export)."""
    run_cfg = build_run_config(stage1, "compare --config")
    mta = run_cfg.mta
    if protocol is None:
        protocol = Protocol(multi_task_steps=run_cfg.train.steps, fixed_budget=run_cfg.train.steps,
                            eval_every=run_cfg.train.eval_every)
    runs: list[RunSpec] = []
    for task, steps in (single_steps or {}).items():
        runs.append(_single(stage1, task, steps, out))
    runs += _systems(stage1, stage2, out, mta, None, protocol)
    for seed in seeds:
        runs += _systems(stage1, stage2, out, mta, seed, protocol)
    start = str(out / "mta_stage1" / protocol.start_from)
    runs += [_derive(stage1, f"mta_stage1_T{t:g}", out, {**protocol.stage1_changes(), "mta.temperature": float(t)})
             for t in temperatures]
    if stage2 is not None and no_freeze:
        lr = stage2.get("mta", {}).get("train", {}).get("lr", 1e-3)
        runs.append(_derive(stage2, "mta_stage2_nofreeze", out,
                            {"train.init_from": start, "train.trainable": [{"pattern": "*", "lr": lr}]},
                            after="mta_stage1"))
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
    changes = protocol.stage1_changes() if variant.stage == 1 else \
        {"train.init_from": str(out / first / protocol.start_from)}
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


def _systems(stage1: dict[str, Any], stage2: dict[str, Any] | None, out: Path, mta, seed: int | None,
             protocol: Protocol) -> list[RunSpec]:
    suffix = "" if seed is None else f"_s{seed}"
    extra = {**protocol.stage1_changes(), **({} if seed is None else {"train.seed": seed, "data.seed": seed})}
    runs = [_derive(stage1, f"shared{suffix}", out, {**shared_changes(stage1), **extra}, system="shared")]
    for name, (width, _) in matched_baselines(mta).items():
        runs.append(_derive(stage1, f"{name}{suffix}", out, {**shared_changes(stage1, width), **extra}, system=name))
    runs.append(_derive(stage1, f"mta_stage1{suffix}", out, extra, system="mta_stage1"))
    if stage2 is not None:
        seeded = {} if seed is None else {"train.seed": seed, "data.seed": seed}
        for first, second in ((f"mta_stage1{suffix}", "mta_stage2"), (f"shared{suffix}", "shared_stage2"),
                              (f"mta_stage1{suffix}", "mta_stage1_more")):
            init = {"train.init_from": str(out / first / protocol.start_from), **seeded}
            if second == "shared_stage2":  # the shared model's layer keys come from its own export
                init.update({"mta.num_experts": 1, "mta.k": 1, "mta.route_by": "type", "mta.tasks": None,
                             "mta.task_adapter_assignment": None, "mta.always_on_adapters": 0})
            if second == "mta_stage1_more":  # stage 2's data, steps and schedule; stage 1's parts, all trainable
                init.update({"train.stage": 1, "train.trainable": None})
            runs.append(_derive(stage2, f"{second}{suffix}", out, init, system=second, after=first))
    return runs


def _single(stage1: dict[str, Any], task: str, steps: int, out: Path) -> RunSpec:
    """``task`` alone on the shared architecture, ``steps`` steps; per-task settings kept for ``task`` only."""
    train = stage1.get("mta", {}).get("train", {})
    changes: dict[str, Any] = {**shared_changes(stage1), "data.tasks": [task], "data.curriculum": None,
                               "train.steps": steps,
                               "train.eval_every": min(train.get("eval_every", steps), steps),
                               "train.save_every": min(train.get("save_every", steps), steps),
                               "train.warmup_steps": min(train.get("warmup_steps", 0), max(0, steps - 1))}
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


def _derive(base: dict[str, Any], name: str, out: Path, changes: dict[str, Any], single_task: str | None = None,
            system: str | None = None, after: str | None = None) -> RunSpec:
    """Run ``name``: ``base`` with ``changes`` (keys in the overrides' dialect, see ``set_config_key``)."""
    raw = copy.deepcopy(base)
    for key, value in {**changes, "train.output_dir": str(child_path(out, name))}.items():
        set_config_key(raw, key, value, f"compare run {name}: {key}")
    return RunSpec(name, raw, single_task, system, after)


def ensure_run(spec: RunSpec, launcher: Sequence[str] = (sys.executable,), overwrite: bool = False) -> bool:
    """Train ``spec`` unless a finished run with the same resolved config exists; True when reused. An unfinished
    run with the same config resumes from its checkpoint; a finished run with another config is replaced only with
    ``overwrite``; a run directory another process is training in is never touched."""
    resolved = build_run_config(spec.raw, f"compare run {spec.name}").to_json()
    run_dir = Path(resolved["mta"]["train"]["output_dir"])
    previous = run_dir / "run_config.json"
    same = previous.is_file() and same_config(json.loads(previous.read_text()), resolved)
    if (run_dir / "export" / "tasks.json").is_file() and same:
        return True
    busy = in_use(run_dir)
    if busy:
        raise ConfigError(f"compare: run {spec.name}: {busy}")
    resume = same and (run_dir / "checkpoints" / "latest").is_file()
    if run_dir.exists() and not resume:
        if (run_dir / "export" / "tasks.json").is_file() and not overwrite:
            raise ConfigError(f"compare: {run_dir} holds a finished run {spec.name} trained with another "
                              "configuration; pass --overwrite to retrain it, or use another --out")
        shutil.rmtree(run_dir)  # the comparison's own unfinished run of another configuration
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir.parent / f"{spec.name}.config.json"
    config.write_text(json.dumps(spec.raw, indent=2) + "\n")
    log = run_dir.parent / f"{spec.name}.log"
    with log.open("a" if resume else "w") as handle:
        command = [*launcher, *TRAIN_MODULE, "--deepspeed", str(config), *(["--resume"] if resume else [])]
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"compare: run {spec.name} failed (exit {code}); see {log}")
    return False


def same_config(previous: Any, requested: Any, default: Any = None) -> bool:
    """Whether a finished run's resolved config is the requested one. A key the earlier run's config lacks
    (an option added to mta_moe since) counts as equal when the requested value is that option's default."""
    if default is None:
        default = build_run_config({"train_micro_batch_size_per_gpu": 1}).to_json()
    if isinstance(previous, dict) and isinstance(requested, dict):
        if set(previous) - set(requested):
            return False
        for key, value in requested.items():
            fallback = default.get(key) if isinstance(default, dict) else None
            if key not in previous:
                if not isinstance(default, dict) or key not in default or value != default[key]:
                    return False
            elif not same_config(previous[key], value, fallback if fallback is not None else {}):
                return False
        return True
    return previous == requested


def compare(stage1: dict[str, Any], stage2: dict[str, Any] | None, out_dir: str | Path,
            temperatures: Sequence[float] = (), no_freeze: bool = False, threshold: float = 0.01,
            launcher: Sequence[str] = (sys.executable,), log: Callable[[str], None] | None = None,
            variants: Sequence[Variant] = (), single_task_budget: str = "examples", single_task: bool = True,
            seeds: Sequence[int] = (), device: str = "cpu", steps: int | None = None, patience: int = 4,
            eval_every: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train (or reuse) every run, score the single-task baselines, and write the report to out_dir/report
    (generation and scoring on ``device``: cpu, cuda[:N] or auto); progress goes to ``log`` (default: the
    ``mta_moe`` logger). Multi-task stage-1 runs train up to ``steps`` steps (default: twice the config's budget),
    validate every ``eval_every`` (default: the config's) and stop after ``patience`` validations without a better
    macro (0: no early stopping); with a validation split every run is scored at its best validation checkpoint and
    at the config's step budget."""
    log = log or get_logger(__name__).info
    from ..data import load_task_data
    from ..evaluation.loading import load_export, resolve_device
    from ..evaluation.report import ReportConfig, build_report
    from ..evaluation.scoring import evaluate_rows
    from .data_files import chance_for, write_split

    if single_task_budget not in BUDGETS:
        raise ConfigError(f"compare: --single-task-budget must be one of {list(BUDGETS)}, got {single_task_budget!r}")
    out = Path(out_dir).resolve()
    resolve_device(device)  # a device that is not there is refused before any run starts
    run_cfg = build_run_config(stage1, "compare --config")
    for name, value, least in (("--steps", steps, 1), ("--patience", patience, 0), ("--eval-every", eval_every, 1)):
        if value is not None and value < least:
            raise ConfigError(f"compare: {name} must be an integer >= {least}, got {value}")
    budget = run_cfg.train.steps
    if steps is not None and steps < budget:
        raise ConfigError(f"compare: --steps ({steps}) is below the config's budget mta.train.steps ({budget}); the "
                          "fixed-budget table scores every run at that step")
    data = load_task_data(run_cfg.data, run_cfg.mta.task_types, out / "data")
    if "test" not in data.splits:
        raise ConfigError("compare: the data has no test split (mta.data.files.test, or the bundled suite)")
    protocol = Protocol(single_task_budget, steps or 2 * budget, seeds=list(seeds), stage2=stage2 is not None,
                        fixed_budget=budget, patience=patience or None,
                        eval_every=eval_every or run_cfg.train.eval_every,
                        best_checkpoint="validation" in data.splits)
    single_steps = None
    if single_task:
        rows = data.task_indices()
        order = run_cfg.mta.tasks if run_cfg.mta.route_by == "task" and run_cfg.mta.tasks else sorted(rows)
        sizes = {t: len(rows[t]) for t in order}
        protocol.examples_per_task = examples_per_task(run_cfg, sizes)
        single_steps = single_task_steps(run_cfg, protocol.examples_per_task, single_task_budget)
        protocol.single_task_steps = dict(single_steps)
    protocol.matched = {name: what for name, (_, what) in matched_baselines(run_cfg.mta).items()}
    runs = plan_runs(stage1, stage2, out, temperatures, no_freeze, variants, single_steps, seeds,
                     protocol=protocol)
    for spec in runs:
        log(f"{spec.name}: {'reused' if ensure_run(spec, launcher, overwrite) else 'trained'}")
    test_path = write_split(data.splits["test"], out / "data" / "test.jsonl")
    validation_path = (write_split(data.splits["validation"], out / "data" / "validation.jsonl")
                       if "validation" in data.splits else None)
    baseline = {}
    for spec in runs:
        if spec.single_task is not None:
            export = load_export(out / spec.name / protocol.start_from, device)
            rows = data.splits["test"].filter(lambda r: r["task"] == spec.single_task)
            result = evaluate_rows(export, rows, run_cfg.train.eval_batch_size, run_cfg.data.max_input_length,
                                   run_cfg.train.max_new_tokens)
            baseline[spec.single_task] = result["tasks"][spec.single_task]["primary"]
    systems = {spec.name: str(out / spec.name) for spec in runs if spec.single_task is None}
    groups = {spec.name: spec.system or spec.name for spec in runs if spec.single_task is None}
    report_cfg = ReportConfig(systems, str(test_path), None if validation_path is None else str(validation_path),
                              baseline or None, threshold, chance_for(run_cfg, data, out / "data"),
                              max_input_length=run_cfg.data.max_input_length,
                              max_new_tokens=run_cfg.train.max_new_tokens, baseline_name="single-task",
                              protocol=protocol.as_dict(), seed_groups=groups, device=device,
                              checkpoint=protocol.start_from, reference="shared",
                              fixed_budget=(None if not protocol.best_checkpoint else
                                            {spec.name: str(_at_budget(out / spec.name, protocol.fixed_budget))
                                             for spec in runs if spec.single_task is None and spec.after is None}),
                              fixed_budget_title=f"At the fixed budget (step {protocol.fixed_budget})")
    return build_report(report_cfg, out / "report")


def _at_budget(run_dir: Path, step: int) -> Path:
    """A stage-1 run's export at ``step``: its snapshot there, else its final export (it ended at or before it)."""
    snapshot = run_dir / f"export_step{step}"
    return snapshot if (snapshot / "tasks.json").is_file() else run_dir / "export"
