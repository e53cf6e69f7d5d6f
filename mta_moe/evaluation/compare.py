"""Baselines and comparison on the same data, budget and seed: one single-task model per task, a fully
shared multi-task model, MTA after stage 1 and after stage 2, plus optional ablations; finished runs whose
resolved config matches are reused. Ends with the report, deltas taken against the single-task models."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..config import ConfigError
from ..data import load_examples
from ..data.suite import SUITE_TASKS
from ..training.run_config import apply_overrides, build_run_config
from .report import DEFAULT_THRESHOLD, ReportConfig, build_report
from .scoring import evaluate_rows, load_chance, load_export

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "launchers" / "train.py"


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


def plan_runs(stage1: dict[str, Any], stage2: dict[str, Any] | None, out: Path,
              temperatures: Sequence[float] = (), no_freeze: bool = False,
              variants: Sequence[Variant] = ()) -> list[RunSpec]:
    """Every run the comparison needs, in the order they must run (stage 2 after stage 1)."""
    suite = stage1.get("mta", {}).get("data", {}).get("suite", {"tasks": None})
    if suite is None:
        raise ConfigError("compare: mta.data.suite is null; single-task baselines are drawn per task from the "
                          "bundled suite (a per-task filter for file data is not implemented)")
    tasks = suite.get("tasks") or list(SUITE_TASKS)
    runs = [_derive(stage1, f"single_{task}", out, {"data.suite.tasks": [task], "data.curriculum": None},
                    single_task=task) for task in tasks]
    types = stage1.get("mta", {}).get("task_types", ["classify", "nli", "generate"])
    runs.append(_derive(stage1, "shared", out, {"num_experts": 1, "k": 1, "ep_size": 1,
                                                "task_adapter_assignment": {t: [0] for t in types}}))
    runs.append(_derive(stage1, "mta_stage1", out, {}))
    runs += [_derive(stage1, f"mta_stage1_T{t:g}", out, {"temperature": float(t)}) for t in temperatures]
    if stage2 is not None:
        init = {"train.init_from": str(out / "mta_stage1" / "export")}
        runs.append(_derive(stage2, "mta_stage2", out, init))
        if no_freeze:
            lr = stage2.get("mta", {}).get("train", {}).get("lr", 1e-3)
            runs.append(_derive(stage2, "mta_stage2_nofreeze", out,
                                {**init, "train.trainable": [{"pattern": "*", "lr": lr}]}))
    for variant in variants:
        if variant.stage == 2 and stage2 is None:
            raise ConfigError(f"compare: variant {variant.name} is a stage-2 run; pass --stage2")
        base = stage1 if variant.stage == 1 else stage2
        changes = {} if variant.stage == 1 else {"train.init_from": str(out / "mta_stage1" / "export")}
        spec = _derive(base, variant.name, out, changes)
        apply_overrides(spec.raw, variant.overrides)
        if spec.raw["mta"]["train"]["output_dir"] != str(out / variant.name):
            raise ConfigError(f"compare: variant {variant.name} may not change train.output_dir")
        runs.append(spec)
    names = [r.name for r in runs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(f"compare: two runs are named {clash[0]!r}; give the variant another name")
    return runs


def _derive(base: dict[str, Any], name: str, out: Path, changes: dict[str, Any],
            single_task: str | None = None) -> RunSpec:
    raw = copy.deepcopy(base)
    mta = raw.setdefault("mta", {})
    for dotted, value in {**changes, "train.output_dir": str(out / name)}.items():
        *parents, leaf = dotted.split(".")
        node = mta
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return RunSpec(name, raw, single_task)


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
        code = subprocess.call([*launcher, str(TRAIN_SCRIPT), "--deepspeed", str(config)], stdout=handle,
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
            temperatures: Sequence[float] = (), no_freeze: bool = False, threshold: float = DEFAULT_THRESHOLD,
            launcher: Sequence[str] = (sys.executable,), log=print, variants: Sequence[Variant] = ()) -> dict[str, Any]:
    """Train (or reuse) every run, score the single-task baselines, and write the report to out_dir/report."""
    out = Path(out_dir).resolve()
    runs = plan_runs(stage1, stage2, out, temperatures, no_freeze, variants)
    for spec in runs:
        log(f"{spec.name}: {'reused' if ensure_run(spec, launcher) else 'trained'}")
    suite = out / "mta_stage1" / "data" / "suite"
    run_cfg = build_run_config(stage1, "compare")
    cfg = run_cfg.data
    baseline = {}
    test, _ = load_examples(suite / "test.jsonl", run_cfg.mta.task_types)
    for spec in runs:
        if spec.single_task is not None:
            export = load_export(out / spec.name / "export")
            rows = test.filter(lambda r: r["task"] == spec.single_task)
            result = evaluate_rows(export, rows, 64, cfg.max_input_length, cfg.max_target_length)
            baseline[spec.single_task] = result["tasks"][spec.single_task]["primary"]
    chance = load_chance(suite / "suite.json")
    systems = {spec.name: str(out / spec.name) for spec in runs if spec.single_task is None}
    report_cfg = ReportConfig(systems, str(suite / "test.jsonl"), str(suite / "validation.jsonl"), baseline,
                              threshold, chance, max_input_length=cfg.max_input_length,
                              max_new_tokens=cfg.max_target_length, baseline_name="single-task")
    return build_report(report_cfg, out / "report")
