"""Runs grouped into systems (one run per seed): mean ± sample standard deviation per task and of the macro, and
paired tests of every system against a reference system (:mod:`.significance`), rendered as one column per
system."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from .significance import ALPHA, compare_systems


def group_runs(runs: Sequence[str], groups: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``{system: {seed key: run}}``; a run's seed key is its name after the system's (``shared_s1`` → ``_s1``,
    the system's own run → ``""``), so runs of two systems with one seed key are paired."""
    out: dict[str, dict[str, str]] = {}
    for run in runs:
        system = groups.get(run, run)
        key = run[len(system) :] if run.startswith(system) else run
        out.setdefault(system, {})[key] = run
    return out


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min, max and count."""
    values = list(values)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": len(values)}


def system_summary(
    entries: Mapping[str, Mapping[str, Any]], groups: Mapping[str, str], reference: str | None
) -> dict[str, Any]:
    """``entries``: run name → ``{"scores", "macro", "row_scores", "row_tasks"}``. Per system: its runs, each
    task's and the macro's spread over seeds; ``tests``: each system against ``reference`` (None: no tests),
    pairing the runs of equal seed keys that scored the same rows."""
    members = group_runs(list(entries), groups)
    systems = {}
    for system, runs in members.items():
        names = list(runs.values())
        tasks = sorted({t for n in names for t in entries[n]["scores"]})
        systems[system] = {
            "runs": names,
            "macro": spread([entries[n]["macro"] for n in names]),
            "tasks": {t: spread([entries[n]["scores"][t] for n in names if t in entries[n]["scores"]]) for t in tasks},
        }
    tests: dict[str, Any] = {}
    if reference is not None and reference in members:
        rows = entries[next(iter(members[reference].values()))].get("row_tasks")
        comparable = {
            system: {
                key: entries[run]["row_scores"] for key, run in runs.items() if entries[run].get("row_tasks") == rows
            }
            for system, runs in members.items()
        }
        if rows:
            tests = compare_systems(comparable, rows, reference)
    return {"reference": reference, "systems": systems, "tests": tests, "alpha": ALPHA}


def recommendation(summary: Mapping[str, Any]) -> str:
    """Which system to pick on this data: the best mean macro if the paired tests separate it from the reference
    (the bootstrap over test rows and, with 2 seeds or more, the t-test over seeds), otherwise the reference (one
    shared model is the simpler system when nothing beats it for sure)."""
    systems, tests, reference = summary["systems"], summary["tests"], summary["reference"]
    if not tests or reference not in systems:
        return ""
    best = max(systems, key=lambda n: systems[n]["macro"]["mean"])
    if best == reference:
        return f"pick `{reference}`: no system has a higher mean macro on this data"
    test = tests.get(best)
    gain = systems[best]["macro"]["mean"] - systems[reference]["macro"]["mean"]
    alpha = summary["alpha"]
    if test is None or test["macro"]["p"] >= alpha:
        p = "" if test is None else f", p = {test['macro']['p']:.3f}"
        return (
            f"pick `{reference}`: the best system, `{best}`, is {gain:+.3f} macro above it, but the paired test "
            f"does not separate them (p ≥ {alpha}{p}); more seeds or more test rows could"
        )
    rows = f"paired bootstrap p = {test['macro']['p']:.3f}"
    seeds = test.get("seed_level") or {"p": None}
    if seeds["p"] is None:
        return f"pick `{best}`: {gain:+.3f} macro over `{reference}` ({rows}; one seed: run-to-run spread untested)"
    over = f"per-seed Δ {seed_deltas(seeds)}, t-test over {seeds['n']} seeds p = {seeds['p']:.3f}"
    if seeds["p"] < alpha:
        return f"pick `{best}`: {gain:+.3f} macro over `{reference}` ({rows}; {over})"
    needed = seeds["seeds_needed"]
    more = "more seeds could" if needed is None else f"about {needed} seeds would at this spread, if it holds"
    return (
        f"pick `{reference}`: the best system, `{best}`, is {gain:+.3f} macro above it and the bootstrap over test "
        f"rows separates them ({rows}), but the seeds do not ({over}); {more}"
    )


def seed_deltas(seed_level: Mapping[str, Any]) -> str:
    """Per-seed macro differences as text: ``+0.001 / -0.148 / +0.033``."""
    return " / ".join(f"{d:+.3f}" for d in seed_level["deltas"])


def render_system_table(
    summary: Mapping[str, Any], kinds: Mapping[str, str], chance: Mapping[str, float], title: str
) -> list[str]:
    """Markdown: one row per task and a macro row, one column per system (mean ± sd over its seeds); ▲ / ▼ mark
    a paired-test difference from the reference at p < alpha; then the paired tests' table."""
    systems, tests, reference = summary["systems"], summary["tests"], summary["reference"]
    names = list(systems)
    tasks = sorted({t for s in systems.values() for t in s["tasks"]})
    seeds = max((s["macro"]["n"] for s in systems.values()), default=1)
    lines = [
        f"## {title}",
        "",
        (f"Mean ± sample standard deviation over {seeds} seeds. " if seeds > 1 else "")
        + (
            f"▲ / ▼: above / below `{reference}` in a paired bootstrap over test rows pooled over seeds "
            f"(p < {summary['alpha']}; tests below)."
            if tests
            else ""
        ),
        "",
    ]
    header = "| task | kind |" + "".join(f" {n} |" for n in names) + (" chance |" if chance else "")
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for task in tasks:
        row = f"| `{task}` | {kinds.get(task, '')} |"
        for name in names:
            row += f" {_cell(systems[name]['tasks'].get(task), tests.get(name, {}).get('tasks', {}).get(task))} |"
        lines.append(row + (f" {chance[task]:.3f} |" if task in chance else (" |" if chance else "")))
    lines.append(
        "| **macro** | |"
        + "".join(f" **{_cell(systems[n]['macro'], tests.get(n, {}).get('macro'))}** |" for n in names)
        + (" |" if chance else "")
    )
    lines.append("")
    if tests:
        lines += [
            f"Paired tests against `{reference}` (Δ = system − {reference}; 95 % bootstrap interval):",
            "",
            "| system | paired seeds | Δ macro | 95 % interval | p | tasks above | tasks below | per-seed Δ macro "
            "| seed p |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, test in tests.items():
            macro = test["macro"]
            above = [t for t, r in test["tasks"].items() if r["p"] < summary["alpha"] and r["delta"] > 0]
            below = [t for t, r in test["tasks"].items() if r["p"] < summary["alpha"] and r["delta"] < 0]
            seeds = test.get("seed_level") or {"deltas": [], "p": None}
            lines.append(
                f"| {name} | {test['seeds']} | {macro['delta']:+.3f} | [{macro['low']:+.3f}, "
                f"{macro['high']:+.3f}] | {macro['p']:.3f} | {', '.join(above) or '—'} | "
                f"{', '.join(below) or '—'} | {seed_deltas(seeds) or '—'} | "
                f"{'—' if seeds['p'] is None else format(seeds['p'], '.3f')} |"
            )
        lines += [
            "",
            "p: the bootstrap over test rows (the trained models fixed); seed p: a paired t-test over the per-seed "
            "macro differences (run-to-run variance; 2 seeds at least). The verdict needs both below "
            f"{summary['alpha']}.",
            "",
            f"**Verdict:** {recommendation(summary)}.",
            "",
        ]
    return lines


def _cell(values: Mapping[str, float] | None, test: Mapping[str, float] | None) -> str:
    if values is None:
        return ""
    text = f"{values['mean']:.3f}" + (f" ± {values['std']:.3f}" if values["n"] > 1 else "")
    if test is not None and test["p"] < ALPHA:
        text += " ▲" if test["delta"] > 0 else " ▼"
    return text
