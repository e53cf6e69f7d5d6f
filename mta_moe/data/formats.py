"""The canonical multi-task example and strict readers for JSONL, JSON, CSV and Parquet files.

A row has ``input``, ``target``, ``type`` (a configured task type) and optionally ``task`` (the task
name; the official ALTER / pCLUE rows have none, and then the task is named after its type).
Other columns are ignored. Every problem is reported as ``file:line`` (``file:row N`` where a format
has no lines) with what was expected; ``on_error="skip"`` drops bad rows and lists them instead.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

if TYPE_CHECKING:  # datasets (and pandas) load when data is read, not when a config is checked
    import datasets

from ..names import name_problem

FIELDS = ("input", "target", "task", "type")
REQUIRED = ("input", "target", "type")
ON_ERROR = ("raise", "skip")
FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class DataError(ValueError):
    """A data file or row is invalid; the message names the file, the line or row, and the problem."""


@dataclass
class LoadReport:
    """What a load kept, what it skipped (only with ``on_error="skip"``) and the repeated rows it kept."""

    path: str
    rows: int = 0
    skipped: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # "line N repeats line M" (kept: the data decides)

    def summary(self) -> str:
        text = f"{self.path}: {self.rows} rows"
        if self.duplicates:
            text += f", {len(self.duplicates)} duplicate rows (kept): " + "; ".join(self.duplicates[:3])
            text += " ..." if len(self.duplicates) > 3 else ""
        if self.skipped:
            text += f", {len(self.skipped)} skipped: " + "; ".join(self.skipped[:5])
            text += " ..." if len(self.skipped) > 5 else ""
        return text


def detect_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown file format {path.suffix!r}; expected one of {sorted(FORMATS)}")
    return fmt


def load_examples(
    path: str | Path, task_types: Sequence[str] | None, on_error: str = "raise", fmt: str | None = None
) -> tuple[datasets.Dataset, LoadReport]:
    """Read one file into a ``datasets.Dataset`` with columns input, target, task, type.

    ``task_types`` are the configured types: a row of any other type is an error, never a new type
    (``None``: any type name, for reading data before a config exists).
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error: must be one of {list(ON_ERROR)}, got {on_error!r}")
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a data file")
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    fmt = fmt or detect_format(path)
    readers = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}
    if fmt not in readers:
        raise DataError(f"{path}: unknown format {fmt!r}; expected one of {sorted(readers)}")
    report = LoadReport(str(path))
    columns: dict[str, list[str]] = {name: [] for name in FIELDS}
    seen: dict[tuple[str, ...], str] = {}
    for where, raw in readers[fmt](path):
        try:
            if isinstance(raw, _Problem):  # found by the reader: bad bytes, bad JSON, wrong field count
                raise DataError(raw)
            row = validate_row(raw, task_types)
        except DataError as exc:
            message = f"{path}:{where}: {exc}"
            if on_error == "raise":
                raise DataError(message) from None
            report.skipped.append(f"{where}: {exc}")
            continue
        key = tuple(row[name] for name in FIELDS)
        if key in seen:
            report.duplicates.append(f"{where} repeats {seen[key]}")
        else:
            seen[key] = where
        for name in FIELDS:
            columns[name].append(row[name])
    report.rows = len(columns["input"])
    if report.rows == 0:
        raise DataError(f"{path}: no valid rows" + (f" ({len(report.skipped)} skipped)" if report.skipped else ""))
    import datasets

    return datasets.Dataset.from_dict(columns), report


def validate_row(row: Any, task_types: Sequence[str] | None) -> dict[str, str]:
    """Check one row and return it in canonical form (``task`` defaults to ``type``; ``task_types`` None: any)."""
    if not isinstance(row, dict):
        raise DataError(f"expected an object with fields {list(REQUIRED)}, got {type(row).__name__}")
    for name in REQUIRED:
        if name not in row or row[name] is None:
            raise DataError(f"missing field {name!r} (required: {list(REQUIRED)})")
    out = {name: row.get(name) for name in FIELDS}
    if out["task"] is None:
        out["task"] = row["type"]
    for name, value in out.items():
        if not isinstance(value, str):
            raise DataError(f"field {name!r} must be a string, got {type(value).__name__} {value!r}")
        if not value.strip():
            raise DataError(f"field {name!r} is empty")
    for name in ("task", "type"):
        problem = name_problem(out[name])
        if problem is not None:
            raise DataError(f"field {name!r}: {problem}")
    if task_types is not None and out["type"] not in task_types:
        raise DataError(f"type {out['type']!r} is not configured; configured task types: {list(task_types)}")
    return out


# ----------------------------------------------------------------------------- readers
# Each yields (where, row) with where = "line N" / "row N"; a _Problem row is a problem found by the reader.


class _Problem(str):
    """A reader-level problem with one row (kept apart from a row that is a JSON string)."""


def _decode_line(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"line {number}"
            try:
                text = _decode_line(raw)
            except DataError as exc:
                yield where, _Problem(exc)
                continue
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as exc:
                yield where, _Problem(f"not valid JSON ({exc.msg} at column {exc.colno})")


def _decode_file(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{path}:line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {column})"
        ) from None


def _read_json(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(_decode_file(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f'{path}: expected a JSON array of rows (or {{"data": [...]}}), got {type(data).__name__}')
    for number, row in enumerate(data, start=1):
        yield f"row {number}", row


def _read_csv(path: Path) -> Iterator[tuple[str, Any]]:
    reader = csv.reader(io.StringIO(_decode_file(path), newline=""))
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path}: empty CSV file; expected a header with {list(REQUIRED)}")
    header = [name.strip() for name in header]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}:line 1: CSV header names column {repeated[0]!r} twice; every column once")
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise DataError(
            f"{path}:line 1: CSV header must contain {list(REQUIRED)} (and optionally 'task'); "
            f"missing {missing}, got {header}"
        )
    for cells in reader:
        where = f"line {reader.line_num}"
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            yield where, _Problem(f"expected {len(header)} fields (header {header}), got {len(cells)}")
            continue
        yield where, dict(zip(header, cells))


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import datasets

        table = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    missing = [name for name in REQUIRED if name not in table.column_names]
    if missing:
        raise DataError(
            f"{path}: Parquet columns must include {list(REQUIRED)}; missing {missing}, got {table.column_names}"
        )
    for number, row in enumerate(table, start=1):
        yield f"row {number}", row
