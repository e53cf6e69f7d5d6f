"""Parameter accounting: trainable and total parameters per component of an MTA model."""

from __future__ import annotations

from torch import nn

from .layer import component_of

COMPONENTS = ("backbone", "adapters", "selector", "always_on", "shared_adapters", "gate_network", "task_heads")


def parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{component: {"trainable": n, "total": n}}`` plus an ``"all"`` row; shared tensors counted once."""
    counts = {c: {"trainable": 0, "total": 0} for c in (*COMPONENTS, "all")}
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        for row in (component_of(name), "all"):
            counts[row]["total"] += param.numel()
            if param.requires_grad:
                counts[row]["trainable"] += param.numel()
    return counts


def format_parameter_counts(model: nn.Module) -> str:
    """A printable table of :func:`parameter_counts`."""
    counts = parameter_counts(model)
    total = max(counts["all"]["total"], 1)
    lines = [f"{'component':<16}{'trainable':>14}{'total':>14}{'% of model':>12}"]
    for name, row in counts.items():
        lines.append(f"{name:<16}{row['trainable']:>14,}{row['total']:>14,}{100 * row['total'] / total:>11.2f}%")
    return "\n".join(lines)
