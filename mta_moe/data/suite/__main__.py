"""``python -m mta_moe.data.suite --out DIR [--suite confirm]``: write a bundled suite's splits and data card."""

import argparse
import sys

from .build import DEFAULT_SUITE, SUITES, SuiteSizes, write_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=SuiteSizes.train, help="training examples per task")
    parser.add_argument("--validation", type=int, default=SuiteSizes.validation)
    parser.add_argument("--test", type=int, default=SuiteSizes.test)
    parser.add_argument(
        "--suite",
        default=DEFAULT_SUITE,
        choices=list(SUITES),
        help="which suite: bundled (settings are chosen on it) or confirm (they are confirmed on it)",
    )
    parser.add_argument("--tasks", nargs="*", default=None, help="a subset of the suite's tasks")
    args = parser.parse_args(argv)
    try:
        paths = write_suite(
            args.out, args.seed, SuiteSizes(args.train, args.validation, args.test), args.tasks, args.suite
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
