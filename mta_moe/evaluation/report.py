"""The negative-transfer report: every system's per-task test scores, deltas against a baseline with
negative transfer flagged, per-task routing heatmaps with collapse warnings, calibration of the
classification tasks, and per-task loss curves. Written as report.md + report.json + PNG figures."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import datasets
import torch

from ..data import load_examples, tokenize_examples
from ..metrics import normalise
from . import figures
from .calibration import calibrate
from .label_scores import label_logits
from .report_markdown import render_markdown
from .routing import collapse_warnings, routing_by_task
from .scoring import evaluate_rows, load_export
from .systems import system_summary

DEFAULT_THRESHOLD = 0.01  # a delta below -threshold is flagged as negative transfer


@dataclass
class ReportConfig:
    systems: dict[str, str]  # name -> run directory (with export/ and metrics.jsonl) or export directory
    test: str  # canonical-format file scored for the table
    validation: str | None = None  # fits the calibration temperatures; None: no calibration
    baseline: str | dict[str, float] | None = None  # a system name, or per-task baseline scores
    threshold: float = DEFAULT_THRESHOLD
    chance: dict[str, float] = field(default_factory=dict)
    batch_size: int = 64
    max_input_length: int = 128
    max_new_tokens: int = 32
    baseline_name: str = "baseline"  # how the table names given baseline scores (e.g. "single-task")
    protocol: dict[str, Any] | None = None  # how a comparison was budgeted (mta_moe.experiments.compare)
    seed_groups: dict[str, str] = field(default_factory=dict)  # run name -> the system it is a seed of
    affinity: dict[str, Any] | None = None  # affinity.json of `mta-moe affinity`: heatmap and groups
    device: str = "cpu"  # where the systems generate and score ("auto": a GPU when one is visible)
    checkpoint: str = "export"  # which export of a run directory is scored: export, best, export_step<N>
    reference: str | None = None  # the system every other is tested against (paired bootstrap; None: no tests)
    # a second, scores-only table: run name -> the export to score (e.g. each run at a fixed step budget)
    fixed_budget: dict[str, str] | None = None
    fixed_budget_title: str = "Fixed budget"


def export_dir(path: str | Path, checkpoint: str = "export") -> Path:
    """A run directory's ``checkpoint`` export (export/, best/, export_step<N>/), or the path itself when it is an
    export."""
    path = Path(path)
    if (path / "tasks.json").is_file():
        return path
    if (path / checkpoint / "tasks.json").is_file():
        return path / checkpoint
    raise FileNotFoundError(f"{path}: neither an export (tasks.json) nor a run directory with {checkpoint}/tasks.json")


def build_report(cfg: ReportConfig, out_dir: str | Path) -> dict[str, Any]:
    """Evaluate every system and write the report into ``out_dir``; returns the report's JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    systems: dict[str, Any] = {}
    warnings: list[str] = []
    rows: dict[str, Any] = {}
    for name, run in cfg.systems.items():
        export = load_export(export_dir(run, cfg.checkpoint), cfg.device)
        entry, test = _scored(export, cfg)
        rows[name] = {"tasks": entry.pop("row_tasks"), "scores": entry.pop("row_scores")}
        entry["routing"] = _routing(name, export, test, cfg, out, warnings)
        if cfg.validation:
            validation, _ = load_examples(cfg.validation, export.registry.task_types)
            entry["calibration"] = _calibration(name, export, validation, test, cfg, out)
        metrics_file = Path(run) / "metrics.jsonl"
        if metrics_file.is_file():
            entry["loss_curve_png"] = _loss_curves(name, metrics_file, out)
        systems[name] = entry
    baseline = _baseline_scores(cfg.baseline, systems)
    report = {
        "systems": systems,
        "baseline": cfg.baseline if isinstance(cfg.baseline, str) else cfg.baseline_name,
        "baseline_given": cfg.baseline is not None and not isinstance(cfg.baseline, str),
        "baseline_scores": baseline,
        "threshold": cfg.threshold,
        "chance": cfg.chance,
        "deltas": _deltas(systems, baseline),
        "warnings": warnings,
    }
    report["negative_transfer"] = {
        name: [t for t, d in deltas.items() if d < -cfg.threshold] for name, deltas in report["deltas"].items()
    }
    if cfg.protocol is not None:
        report["protocol"] = cfg.protocol
    entries = {n: {**e, "row_scores": rows[n]["scores"], "row_tasks": rows[n]["tasks"]} for n, e in systems.items()}
    report["summary"] = system_summary(entries, cfg.seed_groups, cfg.reference)
    report["checkpoint"], report["grouped"] = cfg.checkpoint, bool(cfg.seed_groups)
    if cfg.fixed_budget:
        report["fixed_budget"] = _fixed_budget(cfg, rows)
    if cfg.affinity is not None:
        report["affinity"] = _affinity(cfg.affinity, out)
    (out / "row_scores.json").write_text(json.dumps(rows) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    return report


def _scored(export, cfg: ReportConfig) -> tuple[dict[str, Any], datasets.Dataset]:
    """One export's scores on the test file (its trained tasks), with each row's primary score and task."""
    test, untrained = _known_rows(cfg.test, export)
    result = evaluate_rows(export, test, cfg.batch_size, cfg.max_input_length, cfg.max_new_tokens)
    entry = {
        "scores": {t: m["primary"] for t, m in result["tasks"].items()},
        "metrics": result["tasks"],
        "kinds": result["kinds"],
        "macro": result["macro"],
        "by_type": result.get("by_type", {}),
        "untrained_tasks": untrained,
        "row_scores": result["row_scores"],
        "row_tasks": list(test["task"]),
    }
    return entry, test


def _fixed_budget(cfg: ReportConfig, rows: dict[str, Any]) -> dict[str, Any]:
    """The second table's runs scored (scores only) and summarised like the first."""
    entries = {}
    for name, directory in (cfg.fixed_budget or {}).items():
        entry, _ = _scored(load_export(directory, cfg.device), cfg)
        entries[name] = entry
        rows[f"{name}@fixed_budget"] = {"tasks": entry["row_tasks"], "scores": entry["row_scores"]}
    summary = system_summary(entries, cfg.seed_groups, cfg.reference)
    return {
        "title": cfg.fixed_budget_title,
        "exports": dict(cfg.fixed_budget or {}),
        "runs": {n: {"scores": e["scores"], "macro": e["macro"]} for n, e in entries.items()},
        "summary": summary,
    }


def _affinity(record: Mapping[str, Any], out: Path) -> dict[str, Any]:
    png = figures.affinity_heatmap(out / "affinity.png", record["tasks"], record["normalised"], record["groups"])
    return {"tasks": record["tasks"], "normalised": record["normalised"], "groups": record["groups"], "png": png.name}


def _known_rows(path: str, export) -> tuple[datasets.Dataset, list[str]]:
    """The test rows of the tasks this system was trained on, and the test's tasks it was not trained on
    (a system trained before a task was added): those are left out of its scores and its macro."""
    test, _ = load_examples(path, export.registry.task_types)
    untrained = sorted(set(test["task"]) - set(export.registry.names))
    if untrained:
        known = set(export.registry.names)
        test = test.filter(lambda r: r["task"] in known)
    if len(test) == 0:
        export.registry.check_known(path, untrained)  # names the tasks it does not know
    return test, untrained


def _baseline_scores(baseline: str | Mapping[str, float] | None, systems: Mapping[str, Any]) -> dict[str, float]:
    if baseline is None:
        return {}
    if isinstance(baseline, str):
        if baseline not in systems:
            raise ValueError(f"baseline {baseline!r} is not among the systems {list(systems)}")
        return dict(systems[baseline]["scores"])
    return dict(baseline)


def _deltas(systems: Mapping[str, Any], baseline: Mapping[str, float]) -> dict[str, dict[str, float]]:
    return {
        name: {t: s - baseline[t] for t, s in entry["scores"].items() if t in baseline}
        for name, entry in systems.items()
    }


def _routing(name: str, export, test: datasets.Dataset, cfg: ReportConfig, out: Path, warnings: list[str]) -> dict:
    tokenized, _ = tokenize_examples(
        test, export.tokenizer, export.registry, cfg.max_input_length, cfg.max_new_tokens, export.mode, export.heads
    )
    layers = {}
    for layer, table in routing_by_task(
        export.model, tokenized, export.collator(), cfg.batch_size, export.device
    ).items():
        png = figures.routing_heatmap(
            out / f"routing_{name}_{_slug(layer)}.png",
            f"{name}: {layer}",
            table.tasks,
            table.mean_weights,
            table.counts,
        )
        found = collapse_warnings(f"{name} {layer}", table.counts, table.sequences)
        warnings.extend(found)
        layers[layer] = {**asdict(table), "png": png.name, "warnings": found}
    return layers


def _calibration(
    name: str, export, validation: datasets.Dataset, test: datasets.Dataset, cfg: ReportConfig, out: Path
) -> dict:
    results = {}
    for task, profile in sorted(export.profiles.items()):
        if profile["kind"] != "classification" or task not in set(test["task"]):
            continue
        labels = profile["labels"]
        logits, gold = {}, {}
        for split, rows in (("validation", validation), ("test", test)):
            subset = rows.filter(lambda r: r["task"] == task)
            logits[split] = label_logits(
                export.model,
                export.tokenizer,
                export.registry,
                subset,
                labels,
                cfg.max_input_length,
                cfg.max_new_tokens,
                cfg.batch_size,
                export.device,
            )
            gold[split] = torch.tensor([_label_index(labels, t, task) for t in subset["target"]])
        result = calibrate(logits["validation"], gold["validation"], logits["test"], gold["test"])
        png = figures.reliability_diagram(
            out / f"reliability_{name}_{task}.png",
            f"{name}: {task}",
            {
                "before": result["reliability_before"],
                f"after (T={result['temperature']:.2f})": result["reliability_after"],
            },
        )
        results[task] = {**result, "png": png.name}
    return results


def _label_index(labels: list[str], target: str, task: str) -> int:
    keys = [normalise(label) for label in labels]
    if normalise(target) not in keys:
        raise ValueError(f"calibration of {task}: target {target!r} is not among the training labels {labels}")
    return keys.index(normalise(target))


def _loss_curves(name: str, metrics_file: Path, out: Path) -> str:
    """Each task's training-loss curve; a step logged by several segments of a resumed run (the steps after its
    checkpoint, run again) keeps the last segment's value, so the curve is drawn once."""
    points: dict[str, dict[int, float]] = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "train":
            for task, value in record.get("task_loss", {}).items():
                if value is not None and math.isfinite(value) and value > 0:
                    points.setdefault(task, {})[record["step"]] = value
    curves = {task: sorted(by_step.items()) for task, by_step in points.items()}
    return figures.loss_curves(out / f"loss_{name}.png", f"{name}: training loss per task", curves).name


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")
