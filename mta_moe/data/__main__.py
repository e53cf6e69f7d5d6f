"""``mta-moe check-data FILE...`` (or ``python -m mta_moe.data FILE...``): check data files in the canonical
format before training.

Prints rows and tasks per file; on the first bad row prints one ``error: file:line: problem`` line
and exits 1 (``--skip-bad-rows`` lists the bad rows instead).
"""

import argparse
import sys

from ..config import DEFAULT_TASK_TYPES
from .formats import DataError, load_examples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mta_moe.data", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--task-types", nargs="+", default=None, help="configured task types (mta.task_types)")
    parser.add_argument("--skip-bad-rows", action="store_true")
    return check_command(parser.parse_args(argv))


def check_command(args: argparse.Namespace, _=()) -> int:
    """Check each file; the first bad row is one ``error:`` line and exit 1."""
    task_types = args.task_types or list(DEFAULT_TASK_TYPES)
    for path in args.files:
        try:
            dataset, report = load_examples(path, task_types, "skip" if args.skip_bad_rows else "raise")
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        tasks = sorted(set(zip(dataset["task"], dataset["type"])))
        print(report.summary())
        print("  tasks: " + ", ".join(f"{name} ({kind})" for name, kind in tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
