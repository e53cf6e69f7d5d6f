"""Write the multi-task report for finished runs:
``python launchers/report.py --system stage1=runs/demo/stage1 --system stage2=runs/demo/stage2 --baseline stage1
--test runs/demo/stage2/data/suite/test.jsonl --validation runs/demo/stage2/data/suite/validation.jsonl
--chance runs/demo/stage2/data/suite/suite.json --out runs/demo/report``.

report.md, report.json and PNG figures (routing heatmaps, reliability diagrams, loss curves) land in --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mta_moe.data import DataError
from mta_moe.evaluation.report import DEFAULT_THRESHOLD, ReportConfig, build_report
from mta_moe.evaluation.scoring import load_chance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", action="append", required=True, metavar="NAME=DIR",
                        help="a run directory (or export) to report on; repeat for each system")
    parser.add_argument("--test", required=True, help="canonical-format data scored for the table")
    parser.add_argument("--validation", help="canonical-format data that fits the calibration temperatures")
    parser.add_argument("--baseline", help="the system the deltas are taken against (default: none)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="flag negative transfer when a delta is below -threshold")
    parser.add_argument("--chance", help="suite.json of the bundled suite: adds chance levels")
    parser.add_argument("--out", required=True, help="directory for report.md, report.json and the figures")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-input-length", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        systems = dict(_pair(item) for item in args.system)
        chance = {}
        if args.chance:
            chance = load_chance(args.chance)
        cfg = ReportConfig(systems, args.test, args.validation, args.baseline, args.threshold, chance,
                           args.batch_size, args.max_input_length, args.max_new_tokens)
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


if __name__ == "__main__":
    sys.exit(main())
