"""Baselines and comparison on the same data and seed: one single-task model per task (at equal examples per
task by default), a fully shared model and a parameter-matched one, MTA after stage 1 and after stage 2 (and the
shared model through the same stage 2), plus seeds and ablations; finished runs whose resolved config matches
are reused. Ends with the report, deltas taken against the single-task models."""
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
from ..training.run_config import apply_overrides, build_run_config
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

    def as_dict(self) -> dict[str, Any]:
        return {"single_task_budget": self.single_task_budget, "multi_task_steps": self.multi_task_steps,
                "examples_per_task": self.examples_per_task, "single_task_steps": self.single_task_steps,
                "seeds": self.seeds, "matched": self.matched, "stage2": self.stage2}


def shared_changes(stage1: Mapping[str, Any], adapter_dim: int | None = None) -> dict[str, Any]:
    """The fully shared model: one adapter that every sequence uses (``adapter_dim``: its width)."""
    changes: dict[str, Any] = {"num_experts": 1, "k": 1, "ep_size": 1, "route_by": "type", "tasks": None,
                               "task_adapter_assignment": None}
    if adapter_dim is not None:
        changes["adapter_dim"] = adapter_dim
    return changes


def plan_runs(stage1: dict[str, Any], stage2: dict[str, Any] | None, out: Path,
              temperatures: Sequence[float] = (), no_freeze: bool = False, variants: Sequence[Variant] = (),
              single_steps: Mapping[str, int] | None = None, seeds: Sequence[int] = (),
              tasks: Sequence[str] | None = None) -> list[RunSpec]:
    """Every run the comparison needs, in the order they must run (a stage-2 run after its stage 1).
    ``single_steps``: steps of each task's single-task run (None: no single-task runs); ``tasks``: the tasks
    of the data (default: from the config's suite)."""
    mta = build_run_config(stage1, "compare --config").mta
    runs: list[RunSpec] = []
    for task, steps in (single_steps or {}).items():
        runs.append(_single(stage1, task, steps, out))
    runs += _systems(stage1, stage2, out, mta, seed=None)
    for seed in seeds:
        runs += _systems(stage1, stage2, out, mta, seed=seed)
    runs += [_derive(stage1, f"mta_stage1_T{t:g}", out, {"temperature": float(t)}) for t in temperatures]
    if stage2 is not None and no_freeze:
        lr = stage2.get("mta", {}).get("train", {}).get("lr", 1e-3)
        runs.append(_derive(stage2, "mta_stage2_nofreeze", out,
                            {"train.init_from": str(out / "mta_stage1" / "export"),
                             "train.trainable": [{"pattern": "*", "lr": lr}]}, after="mta_stage1"))
    for variant in variants:
        if variant.stage == 2 and stage2 is None:
            raise ConfigError(f"compare: variant {variant.name} is a stage-2 run; pass --stage2")
        base = stage1 if variant.stage == 1 else stage2
        changes = {} if variant.stage == 1 else {"train.init_from": str(out / "mta_stage1" / "export")}
        spec = _derive(base, variant.name, out, changes, after=None if variant.stage == 1 else "mta_stage1")
        apply_overrides(spec.raw, variant.overrides)
        if spec.raw["mta"]["train"]["output_dir"] != str(out / variant.name):
            raise ConfigError(f"compare: variant {variant.name} may not change train.output_dir")
        runs.append(spec)
    names = [r.name for r in runs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(f"compare: two runs are named {clash[0]!r}; give the variant another name")
    return runs


def matched_baselines(mta) -> dict[str, tuple[int, str]]:
    """Parameter-matched shared models for an MTA config with bottleneck adapters: name -> (adapter width,
    what it matches). ``shared_matched``: one adapter as wide as the k adapters a sequence uses together;
    ``shared_wide``: one adapter with as many parameters as all the MTA adapters of a layer."""
    if mta.expert_kind != "bottleneck":
        return {}
    out = {}
    if mta.top_k > 1:
        out["shared_matched"] = (mta.top_k * mta.adapter_dim, f"one adapter of width k × r = {mta.top_k * mta.adapter_dim} "
                                                              f"(the adapters a sequence uses)")
    if mta.num_experts > mta.top_k:
        out["shared_wide"] = (mta.num_experts * mta.adapter_dim,
                              f"one adapter of width E × r = {mta.num_experts * mta.adapter_dim} (all adapters)")
    return out


def _systems(stage1: dict[str, Any], stage2: dict[str, Any] | None, out: Path, mta, seed: int | None) -> list[RunSpec]:
    suffix = "" if seed is None else f"_s{seed}"
    extra = {} if seed is None else {"train.seed": seed, "data.seed": seed}
    runs = [_derive(stage1, f"shared{suffix}", out, {**shared_changes(stage1), **extra}, system="shared")]
    for name, (width, _) in matched_baselines(mta).items():
        runs.append(_derive(stage1, f"{name}{suffix}", out, {**shared_changes(stage1, width), **extra}, system=name))
    runs.append(_derive(stage1, f"mta_stage1{suffix}", out, extra, system="mta_stage1"))
    if stage2 is not None:
        for first, second in ((f"mta_stage1{suffix}", "mta_stage2"), (f"shared{suffix}", "shared_stage2")):
            init = {"train.init_from": str(out / first / "export"), **extra}
            if second == "shared_stage2":  # the shared model's layer keys come from its own export
                init.update({"num_experts": 1, "k": 1, "route_by": "type", "tasks": None,
                             "task_adapter_assignment": None})
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
    raw = copy.deepcopy(base)
    mta = raw.setdefault("mta", {})
    for dotted, value in {**changes, "train.output_dir": str(out / name)}.items():
        *parents, leaf = dotted.split(".")
        node = mta
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return RunSpec(name, raw, single_task, system, after)


def ensure_run(spec: RunSpec, launcher: Sequence[str] = (sys.executable,)) -> bool:
    """Train ``spec`` unless a finished run with the same resolved config exists; True when reused."""
    resolved = build_run_config(spec.raw, f"compare run {spec.name}").to_json()
    run_dir = Path(resolved["mta"]["train"]["output_dir"])
    previous = run_dir / "run_config.json"
    if (run_dir / "export" / "tasks.json").is_file() and previous.is_file() and \
            same_config(json.loads(previous.read_text()), resolved):
        return True
    if run_dir.exists():  # unfinished or configured differently: start clean
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    config = run_dir.parent / f"{spec.name}.config.json"
    config.write_text(json.dumps(spec.raw, indent=2) + "\n")
    log = run_dir.parent / f"{spec.name}.log"
    with log.open("w") as handle:
        code = subprocess.call([*launcher, *TRAIN_MODULE, "--deepspeed", str(config)], stdout=handle,
                               stderr=subprocess.STDOUT)
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
            seeds: Sequence[int] = (), device: str = "cpu") -> dict[str, Any]:
    """Train (or reuse) every run, score the single-task baselines, and write the report to out_dir/report
    (generation and scoring on ``device``: cpu, cuda[:N] or auto); progress goes to ``log`` (default: the
    ``mta_moe`` logger)."""
    log = log or get_logger(__name__).info
    from ..data import load_task_data
    from ..evaluation.report import ReportConfig, build_report
    from ..evaluation.scoring import evaluate_rows, load_export, resolve_device
    from .data_files import chance_for, write_split

    if single_task_budget not in BUDGETS:
        raise ConfigError(f"compare: --single-task-budget must be one of {list(BUDGETS)}, got {single_task_budget!r}")
    out = Path(out_dir).resolve()
    resolve_device(device)  # a device that is not there is refused before any run starts
    run_cfg = build_run_config(stage1, "compare --config")
    data = load_task_data(run_cfg.data, run_cfg.mta.task_types, out / "data")
    if "test" not in data.splits:
        raise ConfigError("compare: the data has no test split (mta.data.files.test, or the bundled suite)")
    protocol = Protocol(single_task_budget, run_cfg.train.steps, seeds=list(seeds), stage2=stage2 is not None)
    steps = None
    if single_task:
        rows = data.task_indices()
        order = run_cfg.mta.tasks if run_cfg.mta.route_by == "task" and run_cfg.mta.tasks else sorted(rows)
        sizes = {t: len(rows[t]) for t in order}
        protocol.examples_per_task = examples_per_task(run_cfg, sizes)
        steps = single_task_steps(run_cfg, protocol.examples_per_task, single_task_budget)
        protocol.single_task_steps = dict(steps)
    protocol.matched = {name: what for name, (_, what) in matched_baselines(run_cfg.mta).items()}
    runs = plan_runs(stage1, stage2, out, temperatures, no_freeze, variants, steps, seeds)
    for spec in runs:
        log(f"{spec.name}: {'reused' if ensure_run(spec, launcher) else 'trained'}")
    test_path = write_split(data.splits["test"], out / "data" / "test.jsonl")
    validation_path = (write_split(data.splits["validation"], out / "data" / "validation.jsonl")
                       if "validation" in data.splits else None)
    baseline = {}
    for spec in runs:
        if spec.single_task is not None:
            export = load_export(out / spec.name / "export", device)
            rows = data.splits["test"].filter(lambda r: r["task"] == spec.single_task)
            result = evaluate_rows(export, rows, run_cfg.train.eval_batch_size, run_cfg.data.max_input_length,
                                   run_cfg.train.max_new_tokens)
            baseline[spec.single_task] = result["tasks"][spec.single_task]["primary"]
    systems = {spec.name: str(out / spec.name) for spec in runs if spec.single_task is None}
    report_cfg = ReportConfig(systems, str(test_path), None if validation_path is None else str(validation_path),
                              baseline or None, threshold, chance_for(run_cfg, data, out / "data"),
                              max_input_length=run_cfg.data.max_input_length,
                              max_new_tokens=run_cfg.train.max_new_tokens, baseline_name="single-task",
                              protocol=protocol.as_dict(),
                              seed_groups={spec.name: spec.system for spec in runs if spec.system is not None},
                              device=device)
    return build_report(report_cfg, out / "report")
