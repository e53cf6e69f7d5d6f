"""``mta-moe train``: one MTA stage from a DeepSpeed JSON with an ``mta`` section, plus dotted overrides."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence


def train_command(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """Train as configured; one ``error:`` line and exit 2 on a bad config, bad data or a missing file."""
    from ..config import ConfigError
    from ..data.formats import DataError
    from .run_config import load_run_config

    try:  # the config is checked before DeepSpeed and the trainer are imported: a typo is reported at once
        cfg = load_run_config(args.config, overrides)
    except (ConfigError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .checkpoints import CheckpointError
    from .distributed import leave_process_group
    from .run_dir import RunDirError
    from .setup import build_run
    from .stop_signals import StopRequested
    from .trainer import DivergedError, train

    try:
        out = Path(cfg.train.output_dir)
        fresh = not out.exists()
        try:
            run = build_run(
                cfg,
                resume=args.resume,
                trust_checkpoint=args.trust_checkpoint,
                overwrite=args.overwrite,
                resume_with_changes=_keys(args.resume_with_changes),
            )
        except BaseException:
            if fresh and _rank() == 0:  # nothing of a run that never started stays behind
                shutil.rmtree(out, ignore_errors=True)
            raise
        try:
            scores = train(run)
        finally:
            run.release_output_dir()
    except (ConfigError, DataError, FileNotFoundError, CheckpointError, RunDirError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DivergedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except StopRequested as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 128 + exc.signum
    leave_process_group()
    if scores and run.rank == 0:
        print("final validation: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return 0


def _keys(text: str | None) -> tuple[str, ...]:
    """``--resume-with-changes mta.train.lr,train.seed``: full dotted keys (``train.`` is short for
    ``mta.train.``, as in overrides)."""
    from ..config import RUN_SECTIONS

    keys = []
    for key in (text or "").split(","):
        key = key.strip()
        if key:
            keys.append(f"mta.{key}" if key.split(".")[0] in RUN_SECTIONS else key)
    return tuple(keys)


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)
