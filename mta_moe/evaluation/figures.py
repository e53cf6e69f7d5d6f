"""PNG figures of the report (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def routing_heatmap(
    path: Path, title: str, tasks: Sequence[str], weights: Sequence[Sequence[float]], counts: Sequence[Sequence[int]]
) -> Path:
    """Task x adapter mean gate weights, each cell annotated with its sequence count."""
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(weights[0]), 1.0 + 0.45 * len(tasks)))
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(weights[0])), [f"A{e}" for e in range(len(weights[0]))])
    ax.set_yticks(range(len(tasks)), tasks)
    for i, row in enumerate(counts):
        for j, n in enumerate(row):
            ax.text(
                j, i, str(n), ha="center", va="center", fontsize=7, color="white" if weights[i][j] < 0.6 else "black"
            )
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("adapter (cell: mean gate weight, number: sequences)")
    fig.colorbar(image, ax=ax, fraction=0.05)
    return _save(fig, path)


def reliability_diagram(path: Path, title: str, tables: Mapping[str, Mapping[str, Sequence[float]]]) -> Path:
    """Accuracy against confidence per bin, one line per table (e.g. before / after temperature scaling)."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for name, table in tables.items():
        points = [(c, a) for c, a, n in zip(table["confidence"], table["accuracy"], table["count"]) if n]
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def loss_curves(path: Path, title: str, curves: Mapping[str, Sequence[tuple[int, float]]]) -> Path:
    """Training loss per task against step."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for task, points in sorted(curves.items()):
        if points:
            ax.plot(*zip(*points), label=task, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("mean token loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def affinity_heatmap(
    path: Path, tasks: Sequence[str], values: Sequence[Sequence[float]], groups: Sequence[Sequence[str]]
) -> Path:
    """Task x task normalised affinity (red: one task's step raises the other's loss), tasks ordered by
    group, with the groups (adapters) outlined."""
    order = [t for g in groups for t in g]
    index = [list(tasks).index(t) for t in order]
    grid = [[values[i][j] for j in index] for i in index]
    fig, ax = plt.subplots(figsize=(1.5 + 0.55 * len(order), 1.2 + 0.5 * len(order)))
    image = ax.imshow(grid, cmap="RdBu", vmin=-1.0, vmax=1.0)
    ax.set_xticks(range(len(order)), order, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(order)), order, fontsize=7)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:+.2f}", ha="center", va="center", fontsize=6)
    start = 0
    for g, members in enumerate(groups):
        ax.add_patch(
            plt.Rectangle(
                (start - 0.5, start - 0.5), len(members), len(members), fill=False, edgecolor="black", linewidth=2
            )
        )
        ax.text(start + len(members) - 0.5, start - 0.6, f"A{g}", fontsize=7, ha="right", va="bottom")
        start += len(members)
    ax.set_title("task affinity (lookahead, normalised); boxes: tasks sharing an adapter", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.05)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
