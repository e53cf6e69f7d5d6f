"""Paired tests between two systems scored on the same test rows: a stratified paired bootstrap over rows,
pooled over seeds, and a paired t-test over seeds.

Each system has one run per seed; runs of the two systems with the same seed are paired, and every run scored
the same rows in the same order (the test split does not depend on the training seed). For each row the
difference of the two systems' primary scores is averaged over the seeds; the bootstrap resamples rows within
each task (so every task keeps its size in the macro) and recomputes each task's mean difference and the macro
difference (the mean over tasks). The p-value is two-sided: twice the share of resamples on the other side of 0
than the observed difference (at least one resample's worth, ``1 / resamples``).

The bootstrap holds the trained models fixed: it measures how much the difference depends on which test rows were
drawn, not on which training run was drawn. Where runs of one system differ from each other more than the test rows
can show (a task that one seed learns and another does not), it is overconfident. The seed-level test sees that
variance: each paired seed gives one macro difference, and a two-sided paired t-test over those (n − 1 degrees of
freedom; 2 seeds at least) asks whether their mean is away from 0. With 3 seeds it separates only differences that
every seed agrees on; the verdict requires both tests.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

RESAMPLES = 2000
ALPHA = 0.05


def paired_bootstrap(
    first: Sequence[Sequence[float]],
    second: Sequence[Sequence[float]],
    tasks: Sequence[str],
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """``first`` / ``second``: one list of per-row scores per seed (same seeds, same rows, same order); ``tasks``:
    each row's task. Returns ``{"macro": test, "tasks": {task: test}}``, each test with ``delta`` (first − second),
    ``low`` / ``high`` (95 % percentile interval) and ``p``; ``"seed_level"``: :func:`seed_test` of the
    per-seed macro differences."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.shape[1] != len(tasks) or a.shape[0] == 0:
        raise ValueError(
            f"paired_bootstrap: need [seeds, rows] scores of equal shape with one task per row; got "
            f"{a.shape}, {b.shape} and {len(tasks)} tasks"
        )
    diff = (a - b).mean(axis=0)  # per row, averaged over the paired seeds
    rng = np.random.default_rng(seed)
    names = sorted(set(tasks))
    column = np.asarray(tasks)
    observed, boots = {}, {}
    for name in names:
        rows = diff[column == name]
        observed[name] = float(rows.mean())
        boots[name] = rows[rng.integers(0, len(rows), size=(resamples, len(rows)))].mean(axis=1)
    macro = float(np.mean([observed[n] for n in names]))
    return {
        "macro": _summary(macro, np.mean([boots[n] for n in names], axis=0), resamples),
        "tasks": {n: _summary(observed[n], boots[n], resamples) for n in names},
        "seed_level": seed_test([_macro(row, column, names) for row in a - b]),
    }


def _macro(diff: np.ndarray, column: np.ndarray, names: Sequence[str]) -> float:
    """One seed's macro difference: the mean over tasks of the task's mean row difference."""
    return float(np.mean([diff[column == name].mean() for name in names]))


def seed_test(deltas: Sequence[float]) -> dict[str, Any]:
    """A two-sided paired t-test over per-seed macro differences: ``deltas`` (one per paired seed), ``delta``
    (their mean), ``sd`` (sample standard deviation), ``agree`` (how many have the sign of the mean), ``p``
    (None below 2 seeds: one run says nothing about run-to-run variance) and ``seeds_needed``
    (:func:`seeds_needed` at this mean and spread)."""
    values = [float(d) for d in deltas]
    mean = float(np.mean(values)) if values else 0.0
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    if len(values) < 2:
        p = None
    elif sd == 0.0:  # every seed gave the same difference
        p = 1.0 if mean == 0.0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean) / (sd / np.sqrt(len(values))), df=len(values) - 1))
    agree = sum(1 for d in values if (d > 0) == (mean > 0) and d != 0)
    needed = seeds_needed(mean, sd) if len(values) > 1 else None
    return {"deltas": values, "delta": mean, "sd": sd, "agree": agree, "n": len(values), "p": p, "seeds_needed": needed}


def seeds_needed(mean: float, sd: float, alpha: float = ALPHA, most: int = 50) -> int | None:
    """The fewest paired seeds at which a difference of this ``mean`` and per-seed ``sd`` would reach p < ``alpha``
    in the paired t-test (if later seeds looked like these); None for no difference or more than ``most``."""
    if mean == 0.0:
        return None
    for n in range(2, most + 1):
        if sd == 0.0 or abs(mean) / (sd / np.sqrt(n)) > stats.t.ppf(1 - alpha / 2, df=n - 1):
            return n
    return None


def _summary(delta: float, boot: np.ndarray, resamples: int) -> dict[str, float]:
    low, high = np.quantile(boot, [ALPHA / 2, 1 - ALPHA / 2])
    if delta == 0 and np.all(boot == 0):
        p = 1.0
    else:
        other_side = np.mean(boot <= 0) if delta > 0 else np.mean(boot >= 0)
        p = min(1.0, max(2 * float(other_side), 1.0 / resamples))
    return {"delta": float(delta), "low": float(low), "high": float(high), "p": float(p)}


def compare_systems(
    row_scores: Mapping[str, Mapping[str, Sequence[float]]],
    tasks: Sequence[str],
    reference: str,
    resamples: int = RESAMPLES,
) -> dict[str, dict]:
    """Every system against ``reference``: ``row_scores[system][seed key]`` are one run's per-row scores; only the
    seeds both systems ran are paired. Returns ``{system: {"seeds": n, **paired_bootstrap(...)}}`` (systems without
    a seed in common with the reference are left out)."""
    out = {}
    base = row_scores[reference]
    for system, runs in row_scores.items():
        if system == reference:
            continue
        seeds = [s for s in runs if s in base]
        if seeds:
            out[system] = {
                "seeds": len(seeds),
                **paired_bootstrap([runs[s] for s in seeds], [base[s] for s in seeds], tasks, resamples),
            }
    return out
