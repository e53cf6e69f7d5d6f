"""``mta-moe evaluate`` and ``mta-moe report``: the per-task table of one export, the report of several runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence


def evaluate_command(args: argparse.Namespace, _: Sequence[str] = ()) -> int:
    """Print one line per task (kind, primary metric, chance, the other metrics); ``--out`` writes JSON."""
    from ..data import DataError
    from .scoring import evaluate_export, format_table, load_chance

    try:
        if args.out and Path(args.out).is_dir():
            raise ValueError(f"--out {args.out}: is a directory; name the JSON file to write")
        generation_settings(args)
        chance = load_chance(args.chance) if args.chance else {}
        result = evaluate_export(
            args.model,
            args.data,
            args.batch_size,
            args.max_input_length,
            args.max_new_tokens,
            predictions_path=args.predictions,
            device=args.device,
        )
    except (DataError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result, chance))
    if args.out:
        scores = {task: m["primary"] for task, m in result["tasks"].items()}
        scores["macro"] = result["macro"]
        Path(args.out).write_text(
            json.dumps(
                {
                    "scores": scores,
                    "metrics": result["tasks"],
                    "kinds": result["kinds"],
                    "by_type": result.get("by_type", {}),
                    "chance": chance,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


def generation_settings(args: argparse.Namespace, model: str | None = None) -> None:
    """Fill unset lengths from the run_config.json of the run the export came from (its parent directory, or the
    directory itself when it is a run directory)."""
    model = Path(model or args.model).resolve()
    run_config = model / "run_config.json"
    if not run_config.is_file():
        run_config = model.parent / "run_config.json"
    mta = json.loads(run_config.read_text()).get("mta", {}) if run_config.is_file() else {}
    if args.max_input_length is None:
        args.max_input_length = mta.get("data", {}).get("max_input_length", 128)
    if args.max_new_tokens is None:
        args.max_new_tokens = mta.get("train", {}).get("max_new_tokens", 32)


def report_command(args: argparse.Namespace, _: Sequence[str] = ()) -> int:
    """Write report.md, report.json and the figures of the given systems into ``--out``."""
    from ..data import DataError
    from .report import ReportConfig, build_report
    from .scoring import load_chance

    try:
        systems = dict(_pair(item) for item in args.system)
        generation_settings(args, next(iter(systems.values())))  # lengths the first system was trained with
        chance = load_chance(args.chance) if args.chance else {}
        affinity = json.loads(Path(args.affinity).read_text()) if args.affinity else None
        cfg = ReportConfig(
            systems,
            args.test,
            args.validation,
            args.baseline,
            args.threshold,
            chance,
            args.batch_size,
            args.max_input_length,
            args.max_new_tokens,
            affinity=affinity,
            device=args.device,
        )
        report = build_report(cfg, args.out)
    except (DataError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out) / 'report.md'}")
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    return 0


def _pair(item: str) -> tuple[str, str]:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--system {item!r}: expected NAME=DIR")
    return name, path
