"""Runs every case of a bad-input matrix through ``mta_moe.cli.main`` in this one process (tests/test_bad_input.py):
``python bad_input_worker.py CASES.json RESULTS.json``; each case is ``{"id", "argv", "watch": [paths]}``; each
result records the exit code, the stderr lines and which watched paths exist afterwards."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

from mta_moe import cli

if __name__ == "__main__":
    cases = json.loads(Path(sys.argv[1]).read_text())
    results = {}
    for case in cases:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli.main(case["argv"])
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception as exc:  # noqa: BLE001 - reported, and the test fails on it
                code, err = -1, io.StringIO(f"uncaught {type(exc).__name__}: {exc}")
        results[case["id"]] = {"code": code, "stderr": err.getvalue().splitlines(), "written": [p for p in case.get("watch", []) if os.path.exists(p)]}
    Path(sys.argv[2]).write_text(json.dumps(results, indent=1))
