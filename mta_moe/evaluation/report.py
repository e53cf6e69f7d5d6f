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
from . import figures
from .calibration import calibrate
from .label_scores import label_logits
from ..metrics import normalise
from .routing import collapse_warnings, routing_by_task
from .scoring import evaluate_rows, load_export

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


def export_dir(path: str | Path) -> Path:
    """A run directory's export/, or the path itself when it is an export."""
    path = Path(path)
    if (path / "tasks.json").is_file():
        return path
    if (path / "export" / "tasks.json").is_file():
        return path / "export"
    raise FileNotFoundError(f"{path}: neither an export (tasks.json) nor a run directory with export/tasks.json")


def build_report(cfg: ReportConfig, out_dir: str | Path) -> dict[str, Any]:
    """Evaluate every system and write the report into ``out_dir``; returns the report's JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    systems: dict[str, Any] = {}
    warnings: list[str] = []
    for name, run in cfg.systems.items():
        export = load_export(export_dir(run), cfg.device)
        test, untrained = _known_rows(cfg.test, export)
        result = evaluate_rows(export, test, cfg.batch_size, cfg.max_input_length, cfg.max_new_tokens)
        entry = {"scores": {t: m["primary"] for t, m in result["tasks"].items()}, "metrics": result["tasks"],
                 "kinds": result["kinds"], "macro": result["macro"], "by_type": result.get("by_type", {}),
                 "untrained_tasks": untrained}
        entry["routing"] = _routing(name, export, test, cfg, out, warnings)
        if cfg.validation:
            validation, _ = load_examples(cfg.validation, export.registry.task_types)
            entry["calibration"] = _calibration(name, export, validation, test, cfg, out)
        metrics_file = Path(run) / "metrics.jsonl"
        if metrics_file.is_file():
            entry["loss_curve_png"] = _loss_curves(name, metrics_file, out)
        systems[name] = entry
    baseline = _baseline_scores(cfg.baseline, systems)
    report = {"systems": systems, "baseline": cfg.baseline if isinstance(cfg.baseline, str) else cfg.baseline_name,
              "baseline_given": cfg.baseline is not None and not isinstance(cfg.baseline, str),
              "baseline_scores": baseline, "threshold": cfg.threshold, "chance": cfg.chance,
              "deltas": _deltas(systems, baseline), "warnings": warnings}
    report["negative_transfer"] = {name: [t for t, d in deltas.items() if d < -cfg.threshold]
                                   for name, deltas in report["deltas"].items()}
    if cfg.protocol is not None:
        report["protocol"] = cfg.protocol
    report["seeds"] = seed_summary(systems, cfg.seed_groups, baseline)
    if cfg.affinity is not None:
        report["affinity"] = _affinity(cfg.affinity, out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    return report


def seed_summary(systems: Mapping[str, Any], groups: Mapping[str, str], baseline: Mapping[str, float]
                 ) -> dict[str, dict[str, Any]]:
    """Per system with more than one run (seeds): the runs, mean and spread (sample standard deviation, min,
    max) of the macro score and of the mean Δ against the baseline, and each task's mean score."""
    members: dict[str, list[str]] = {}
    for name in systems:
        members.setdefault(groups.get(name, name), []).append(name)
    out = {}
    for system, names in members.items():
        if len(names) < 2:
            continue
        macros = [systems[n]["macro"] for n in names]
        tasks = sorted({t for n in names for t in systems[n]["scores"]})
        entry = {"runs": names, "macro": _spread(macros),
                 "tasks": {t: _mean([systems[n]["scores"][t] for n in names if t in systems[n]["scores"]])
                           for t in tasks}}
        if baseline:
            entry["mean_delta"] = _spread([_mean([s - baseline[t] for t, s in systems[n]["scores"].items()
                                                  if t in baseline]) for n in names])
        out[system] = entry
    return out


def _spread(values: list[float]) -> dict[str, float]:
    mean = _mean(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": len(values)}


def _affinity(record: Mapping[str, Any], out: Path) -> dict[str, Any]:
    png = figures.affinity_heatmap(out / "affinity.png", record["tasks"], record["normalised"], record["groups"])
    return {"tasks": record["tasks"], "normalised": record["normalised"], "groups": record["groups"],
            "png": png.name}


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
    return {name: {t: s - baseline[t] for t, s in entry["scores"].items() if t in baseline}
            for name, entry in systems.items()}


def _routing(name: str, export, test: datasets.Dataset, cfg: ReportConfig, out: Path, warnings: list[str]) -> dict:
    tokenized, _ = tokenize_examples(test, export.tokenizer, export.registry, cfg.max_input_length,
                                     cfg.max_new_tokens, export.mode)
    layers = {}
    for layer, table in routing_by_task(export.model, tokenized, export.collator(), cfg.batch_size,
                                          export.device).items():
        png = figures.routing_heatmap(out / f"routing_{name}_{_slug(layer)}.png", f"{name}: {layer}", table.tasks,
                                      table.mean_weights, table.counts)
        found = collapse_warnings(f"{name} {layer}", table.counts, table.sequences)
        warnings.extend(found)
        layers[layer] = {**asdict(table), "png": png.name, "warnings": found}
    return layers


def _calibration(name: str, export, validation: datasets.Dataset, test: datasets.Dataset, cfg: ReportConfig,
                 out: Path) -> dict:
    results = {}
    for task, profile in sorted(export.profiles.items()):
        if profile["kind"] != "classification" or task not in set(test["task"]):
            continue
        labels = profile["labels"]
        logits, gold = {}, {}
        for split, rows in (("validation", validation), ("test", test)):
            subset = rows.filter(lambda r: r["task"] == task)
            logits[split] = label_logits(export.model, export.tokenizer, export.registry, subset, labels,
                                         cfg.max_input_length, cfg.max_new_tokens, cfg.batch_size, export.device)
            gold[split] = torch.tensor([_label_index(labels, t, task) for t in subset["target"]])
        result = calibrate(logits["validation"], gold["validation"], logits["test"], gold["test"])
        png = figures.reliability_diagram(out / f"reliability_{name}_{task}.png", f"{name}: {task}",
                                          {"before": result["reliability_before"],
                                           f"after (T={result['temperature']:.2f})": result["reliability_after"]})
        results[task] = {**result, "png": png.name}
    return results


def _label_index(labels: list[str], target: str, task: str) -> int:
    keys = [normalise(label) for label in labels]
    if normalise(target) not in keys:
        raise ValueError(f"calibration of {task}: target {target!r} is not among the training labels {labels}")
    return keys.index(normalise(target))


def _loss_curves(name: str, metrics_file: Path, out: Path) -> str:
    curves: dict[str, list[tuple[int, float]]] = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "train":
            for task, value in record.get("task_loss", {}).items():
                if value is not None and math.isfinite(value) and value > 0:
                    curves.setdefault(task, []).append((record["step"], value))
    return figures.loss_curves(out / f"loss_{name}.png", f"{name}: training loss per task", curves).name


def render_markdown(report: Mapping[str, Any]) -> str:
    systems = report["systems"]
    names = list(systems)
    tasks = sorted({t for entry in systems.values() for t in entry["scores"]})
    baseline = report["baseline_scores"]
    lines = ["# Multi-task report", "",
             f"Primary metric per task (accuracy for classification, exact match for extraction, ROUGE-L F "
             f"for generation); Δ is the score minus the baseline ({report['baseline']}); "
             f"⚠ marks negative transfer (Δ < −{report['threshold']}).", ""]
    given = report.get("baseline_given", False)
    header = ("| task | kind |" + (f" {report['baseline']} |" if given else "")
              + "".join(f" {n} | Δ {n} |" for n in names) + (" chance |" if report["chance"] else ""))
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for task in tasks:
        kind = next(e["kinds"][task] for e in systems.values() if task in e["kinds"])
        row = f"| `{task}` | {kind} |" + (f" {_num(baseline.get(task))} |" if given else "")
        for name in names:
            score = systems[name]["scores"].get(task)
            delta = report["deltas"][name].get(task)
            flag = " ⚠" if delta is not None and delta < -report["threshold"] else ""
            row += f" {_num(score)} | {_num(delta, signed=True)}{flag} |"
        if report["chance"]:
            row += f" {_num(report['chance'].get(task))} |"
        lines.append(row)
    macro = "| **macro** | |" + (f" {_num(_mean(baseline.values()))} |" if given else "") + "".join(
        f" {_num(systems[n]['macro'])} | {_num(_mean(report['deltas'][n].values()), signed=True) if baseline else ''} |"
        for n in names)
    lines += [macro, ""]
    lines += _protocol_lines(report.get("protocol")) + _seed_lines(report.get("seeds", {}), bool(baseline))
    if "affinity" in report:
        aff = report["affinity"]
        lines += ["## Task affinity", "",
                  "Lookahead affinity of a fully shared probe (normalised; negative: a step on one task raises the "
                  "other's loss). Tasks in one box share an adapter.", "", f"![affinity]({aff['png']})", ""]
        lines += [f"- adapter {g}: {', '.join(members)}" for g, members in enumerate(aff["groups"])] + [""]
    for name in names:
        entry = systems[name]
        lines += [f"## {name}", "", f"![loss]({entry['loss_curve_png']})" if "loss_curve_png" in entry else "", ""]
        if entry.get("untrained_tasks"):
            lines.append(f"- not trained on {', '.join(entry['untrained_tasks'])}: left out of its scores and macro")
        for layer, table in entry["routing"].items():
            lines.append(f"- routing `{layer}`: ![routing]({table['png']})" +
                         ("".join(f" — ⚠ {w}" for w in table["warnings"])))
        for task, cal in entry.get("calibration", {}).items():
            lines.append(f"- calibration `{task}`: T = {cal['temperature']:.2f}, NLL {cal['nll_before']:.3f} → "
                         f"{cal['nll_after']:.3f}, ECE {cal['ece_before']:.3f} → {cal['ece_after']:.3f} "
                         f"([reliability]({cal['png']}))")
        lines.append("")
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    return "\n".join(lines)


def _protocol_lines(protocol: Mapping[str, Any] | None) -> list[str]:
    if not protocol:
        return []
    lines = ["## Budget", ""]
    if protocol.get("single_task_steps"):
        how = ("as many examples of its task as the multi-task mixture drew (its sampler replayed)"
               if protocol["single_task_budget"] == "examples" else "as many steps as the multi-task run")
        lines.append(f"Every multi-task system trains {protocol['multi_task_steps']} steps; each single-task model "
                     f"sees {how}:")
        lines += ["", "| task | examples in the mixture | single-task steps |", "|---|---|---|"]
        for task, steps in protocol["single_task_steps"].items():
            lines.append(f"| `{task}` | {protocol['examples_per_task'].get(task, '')} | {steps} |")
        lines.append("")
    for name, what in protocol.get("matched", {}).items():
        lines.append(f"- `{name}`: {what}")
    if protocol.get("stage2"):
        lines.append("- `shared_stage2`: the shared model through the same stage 2 as MTA (same steps, same "
                     "trainable parts), so stage 2's gain can be told apart from its extra steps")
    return lines + [""]


def _seed_lines(seeds: Mapping[str, Any], with_delta: bool) -> list[str]:
    if not seeds:
        return []
    lines = ["## Run-to-run spread", "", "| system | runs | macro mean | std | min | max |"
             + (" mean Δ | std Δ |" if with_delta else ""), "|---|---|---|---|---|---|" + ("---|---|" if with_delta else "")]
    for system, entry in seeds.items():
        m = entry["macro"]
        row = f"| {system} | {m['n']} | {m['mean']:.3f} | {m['std']:.3f} | {m['min']:.3f} | {m['max']:.3f} |"
        if with_delta and "mean_delta" in entry:
            d = entry["mean_delta"]
            row += f" {d['mean']:+.3f} | {d['std']:.3f} |"
        lines.append(row)
    return lines + [""]


def _num(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")
