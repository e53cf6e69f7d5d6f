"""Task and task-type names, which become parts of paths (per-task export folders, comparison runs, figure
files): one character set, checked where names are read, and one way to build a path from a name that cannot
leave its root."""

from __future__ import annotations

import re
from pathlib import Path

# letters (any script), digits, "_", "-", "." and "+"; a letter, digit or "_" first; at most 64 characters
NAME = re.compile(r"^\w[\w.+-]{0,63}$")
RULE = "1–64 letters, digits, '_', '-', '.' or '+', starting with a letter, digit or '_', without '..'"


def name_problem(value: object) -> str | None:
    """Why ``value`` is not a valid task or task-type name (None when it is)."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not NAME.match(value) or ".." in value:
        return f"{value!r} is not a valid name ({RULE})"
    return None


def child_path(root: str | Path, name: str) -> Path:
    """``root / name`` for a ``name`` that is one path component inside ``root`` (raises ValueError otherwise)."""
    root = Path(root)
    problem = name_problem(name)
    if problem is None and (root / name).resolve().parent != root.resolve():
        problem = "it leaves the folder"
    if problem is not None:
        raise ValueError(f"{name!r} cannot name a folder inside {root}: {problem}")
    return root / name
