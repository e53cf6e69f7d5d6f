"""Baselines and comparison on the same data and seed: one single-task model per task (at equal examples per
task by default), a fully shared model and a parameter-matched one, MTA after stage 1 and after stage 2 (and the
shared model through the same stage 2, and MTA stage 1 trained on for stage 2's steps), plus seeds and ablations;
finished runs whose resolved config matches are reused. Multi-task runs may train longer than the configured
budget with early stopping; the report scores every run at its best validation checkpoint and at the configured
budget, with paired tests against the shared model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import ConfigError
from ..logs import get_logger
from ..training.run_config import build_run_config
from ..training.run_dir import in_use
from .budget import examples_per_task, single_task_steps
from .plan import BUDGETS, Protocol, RunSpec, Variant, matched_baselines, plan_runs

TRAIN_MODULE = ("-m", "mta_moe.cli", "train")


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
            raise ConfigError(
                f"compare: {run_dir} holds a finished run {spec.name} trained with another "
                "configuration; pass --overwrite to retrain it, or use another --out"
            )
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


def compare(
    stage1: dict[str, Any],
    stage2: dict[str, Any] | None,
    out_dir: str | Path,
    temperatures: Sequence[float] = (),
    no_freeze: bool = False,
    threshold: float = 0.01,
    launcher: Sequence[str] = (sys.executable,),
    log: Callable[[str], None] | None = None,
    variants: Sequence[Variant] = (),
    single_task_budget: str = "examples",
    single_task: bool = True,
    seeds: Sequence[int] = (),
    device: str = "cpu",
    steps: int | None = None,
    patience: int = 4,
    eval_every: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
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
        raise ConfigError(
            f"compare: --steps ({steps}) is below the config's budget mta.train.steps ({budget}); the "
            "fixed-budget table scores every run at that step"
        )
    data = load_task_data(run_cfg.data, run_cfg.mta.task_types, out / "data")
    if "test" not in data.splits:
        raise ConfigError("compare: the data has no test split (mta.data.files.test, or the bundled suite)")
    protocol = Protocol(
        single_task_budget,
        steps or 2 * budget,
        seeds=list(seeds),
        stage2=stage2 is not None,
        fixed_budget=budget,
        patience=patience or None,
        eval_every=eval_every or run_cfg.train.eval_every,
        best_checkpoint="validation" in data.splits,
    )
    single_steps = None
    if single_task:
        rows = data.task_indices()
        order = run_cfg.mta.tasks if run_cfg.mta.route_by == "task" and run_cfg.mta.tasks else sorted(rows)
        sizes = {t: len(rows[t]) for t in order}
        protocol.examples_per_task = examples_per_task(run_cfg, sizes)
        single_steps = single_task_steps(run_cfg, protocol.examples_per_task, single_task_budget)
        protocol.single_task_steps = dict(single_steps)
    protocol.matched = {name: what for name, (_, what) in matched_baselines(run_cfg.mta).items()}
    runs = plan_runs(stage1, stage2, out, temperatures, no_freeze, variants, single_steps, seeds, protocol=protocol)
    for spec in runs:
        log(f"{spec.name}: {'reused' if ensure_run(spec, launcher, overwrite) else 'trained'}")
    test_path = write_split(data.splits["test"], out / "data" / "test.jsonl")
    validation_path = (
        write_split(data.splits["validation"], out / "data" / "validation.jsonl")
        if "validation" in data.splits
        else None
    )
    baseline = {}
    for spec in runs:
        if spec.single_task is not None:
            export = load_export(out / spec.name / protocol.start_from, device)
            rows = data.splits["test"].filter(lambda r: r["task"] == spec.single_task)
            result = evaluate_rows(
                export, rows, run_cfg.train.eval_batch_size, run_cfg.data.max_input_length, run_cfg.train.max_new_tokens
            )
            baseline[spec.single_task] = result["tasks"][spec.single_task]["primary"]
    systems = {spec.name: str(out / spec.name) for spec in runs if spec.single_task is None}
    groups = {spec.name: spec.system or spec.name for spec in runs if spec.single_task is None}
    report_cfg = ReportConfig(
        systems,
        str(test_path),
        None if validation_path is None else str(validation_path),
        baseline or None,
        threshold,
        chance_for(run_cfg, data, out / "data"),
        max_input_length=run_cfg.data.max_input_length,
        max_new_tokens=run_cfg.train.max_new_tokens,
        baseline_name="single-task",
        protocol=protocol.as_dict(),
        seed_groups=groups,
        device=device,
        checkpoint=protocol.start_from,
        reference="shared",
        fixed_budget=(
            None
            if not protocol.best_checkpoint
            else {
                spec.name: str(_at_budget(out / spec.name, protocol.fixed_budget))
                for spec in runs
                if spec.single_task is None and spec.after is None
            }
        ),
        fixed_budget_title=f"At the fixed budget (step {protocol.fixed_budget})",
    )
    return build_report(report_cfg, out / "report")


def _at_budget(run_dir: Path, step: int) -> Path:
    """A stage-1 run's export at ``step``: its snapshot there, else its final export (it ended at or before it)."""
    snapshot = run_dir / f"export_step{step}"
    return snapshot if (snapshot / "tasks.json").is_file() else run_dir / "export"
