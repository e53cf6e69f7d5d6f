"""report.md from the report's JSON: the score table (one column per system, mean ± sd over seeds, paired-test
marks, when runs are grouped into systems; one column per run with Δ against the baseline otherwise), the budget,
the fixed-budget table, affinity, and each run's curves, routing and calibration."""

from __future__ import annotations

import math
from typing import Any, Mapping

from .systems import render_system_table, spread


def render_markdown(report: Mapping[str, Any]) -> str:
    systems = report["systems"]
    lines = ["# Multi-task report", ""]
    if report.get("grouped"):
        lines += _grouped_tables(report)
    else:
        lines += _run_table(report)
    lines += _protocol_lines(report.get("protocol"))
    if "affinity" in report:
        aff = report["affinity"]
        lines += [
            "## Task affinity",
            "",
            "Lookahead affinity of a fully shared probe (normalised; negative: a step on one task raises the "
            "other's loss). Tasks in one box share an adapter.",
            "",
            f"![affinity]({aff['png']})",
            "",
        ]
        lines += [f"- adapter {g}: {', '.join(members)}" for g, members in enumerate(aff["groups"])] + [""]
    for name, entry in systems.items():
        lines += [f"## {name}", "", f"![loss]({entry['loss_curve_png']})" if "loss_curve_png" in entry else "", ""]
        if entry.get("untrained_tasks"):
            lines.append(f"- not trained on {', '.join(entry['untrained_tasks'])}: left out of its scores and macro")
        for layer, table in entry["routing"].items():
            lines.append(
                f"- routing `{layer}`: ![routing]({table['png']})" + ("".join(f" — ⚠ {w}" for w in table["warnings"]))
            )
        for task, cal in entry.get("calibration", {}).items():
            lines.append(
                f"- calibration `{task}`: T = {cal['temperature']:.2f}, NLL {cal['nll_before']:.3f} → "
                f"{cal['nll_after']:.3f}, ECE {cal['ece_before']:.3f} → {cal['ece_after']:.3f} "
                f"([reliability]({cal['png']}))"
            )
        lines.append("")
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    return "\n".join(lines)


def _run_table(report: Mapping[str, Any]) -> list[str]:
    """One column per run; Δ columns against the baseline only when there is one."""
    systems, baseline = report["systems"], report["baseline_scores"]
    names = list(systems)
    tasks = sorted({t for entry in systems.values() for t in entry["scores"]})
    with_delta = bool(baseline)
    lines = [
        _metric_line()
        + (
            f" Δ is the score minus the baseline ({report['baseline']}); ⚠ marks negative "
            f"transfer (Δ < −{report['threshold']})."
            if with_delta
            else ""
        ),
        "",
    ]
    given = report.get("baseline_given", False)
    header = (
        "| task | kind |"
        + (f" {report['baseline']} |" if given else "")
        + "".join(f" {n} |" + (f" Δ {n} |" if with_delta else "") for n in names)
        + (" chance |" if report["chance"] else "")
    )
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for task in tasks:
        kind = next(e["kinds"][task] for e in systems.values() if task in e["kinds"])
        row = f"| `{task}` | {kind} |" + (f" {_num(baseline.get(task))} |" if given else "")
        for name in names:
            row += f" {_num(systems[name]['scores'].get(task))} |"
            if with_delta:
                delta = report["deltas"][name].get(task)
                flag = " ⚠" if delta is not None and delta < -report["threshold"] else ""
                row += f" {_num(delta, signed=True)}{flag} |"
        if report["chance"]:
            row += f" {_num(report['chance'].get(task))} |"
        lines.append(row)
    macro = "| **macro** | |" + (f" {_num(_mean(baseline.values()))} |" if given else "")
    for name in names:
        macro += f" {_num(systems[name]['macro'])} |"
        if with_delta:
            macro += f" {_num(_mean(report['deltas'][name].values()), signed=True)} |"
    return lines + [macro, ""]


def _grouped_tables(report: Mapping[str, Any]) -> list[str]:
    """The systems table at the scored checkpoint, then the fixed-budget one; given baseline scores (single-task
    models) as the first column."""
    kinds = {t: k for e in report["systems"].values() for t, k in e["kinds"].items()}
    checkpoint = report.get("checkpoint", "export")
    title = "At each run's best validation checkpoint" if checkpoint == "best" else f"At each run's `{checkpoint}`"
    lines = [_metric_line(), ""]
    for summary, heading in (
        (report["summary"], title),
        *(
            ((report["fixed_budget"]["summary"], report["fixed_budget"]["title"]),)
            if report.get("fixed_budget")
            else ()
        ),
    ):
        summary = _with_baseline(summary, report)
        lines += render_system_table(summary, kinds, report["chance"], heading)
    return lines


def _with_baseline(summary: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    if not report.get("baseline_given"):
        return dict(summary)
    scores = report["baseline_scores"]
    column = {
        "runs": [],
        "macro": spread([_mean(scores.values())]),
        "tasks": {t: spread([v]) for t, v in scores.items()},
    }
    return {**summary, "systems": {report["baseline"]: column, **summary["systems"]}}


def _metric_line() -> str:
    return (
        "Primary metric per task (accuracy for classification, exact match for extraction, ROUGE-L F for generation)."
    )


def _protocol_lines(protocol: Mapping[str, Any] | None) -> list[str]:
    if not protocol:
        return []
    lines = ["## Budget", ""]
    if protocol.get("best_checkpoint"):
        lines.append(
            f"Every multi-task system trains up to {protocol['multi_task_steps']} steps, validating every "
            f"{protocol.get('eval_every')} steps; "
            + (
                f"it stops after {protocol['patience']} validations without a better validation macro, "
                if protocol.get("patience")
                else ""
            )
            + "and is scored at its best validation checkpoint. The fixed-budget table scores each run at "
            f"step {protocol['fixed_budget']} (its checkpoint there; a run that stopped earlier, at its "
            "last step)."
        )
        lines.append("")
    if protocol.get("single_task_steps"):
        how = (
            "as many examples of its task as the multi-task mixture drew (its sampler replayed)"
            if protocol["single_task_budget"] == "examples"
            else "as many steps as the multi-task run"
        )
        lines.append(f"Each single-task model sees {how} at the fixed budget:")
        lines += ["", "| task | examples in the mixture | single-task steps |", "|---|---|---|"]
        for task, steps in protocol["single_task_steps"].items():
            lines.append(f"| `{task}` | {protocol['examples_per_task'].get(task, '')} | {steps} |")
        lines.append("")
    for name, what in protocol.get("matched", {}).items():
        lines.append(f"- `{name}`: {what}")
    if protocol.get("stage2"):
        lines.append(
            "- `shared_stage2`: the shared model through the same stage 2 as MTA (same steps, same "
            "trainable parts); `mta_stage1_more`: MTA stage 1 trained on for stage 2's steps (same data, "
            "learning rate and schedule, every part trainable, no stage-2 parts), the reference for stage "
            "2's gain"
        )
    return lines + [""]


def _num(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
