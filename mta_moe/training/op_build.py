"""DeepSpeed's just-in-time op builds: where they are cached and the lock a killed build leaves behind.

DeepSpeed compiles some ops on first use (on the CPU accelerator: ``deepspeed_shm_comm``, at process-group start)
into torch's extension cache. The compiling process holds ``<cache>/<build>/<op>/lock``; every other process waits
for that file to disappear, without a timeout. A build that was killed leaves the file, and every later DeepSpeed
start then hangs silently. ``stale_build_locks`` finds such files so a run can say so before it waits.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from torch.utils.cpp_extension import get_default_build_root

from ..logs import get_logger

log = get_logger(__name__)

# A CPU op builds in under a minute on 2 cores and a CUDA op in a few; a lock older than this is a killed build.
STALE_AFTER_S = 15 * 60


def extensions_root() -> Path:
    """The directory torch builds extensions into (``TORCH_EXTENSIONS_DIR`` or its default under ~/.cache)."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def stale_build_locks(root: Path | None = None, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """The DeepSpeed op build locks under ``root`` that are older than ``older_than_s`` seconds."""
    return list(_lock_ages(root, older_than_s))


def warn_stale_build_locks(root: Path | None = None) -> list[Path]:
    """Log one line per stale lock (DeepSpeed is about to wait on it forever); returns the locks."""
    ages = _lock_ages(root, STALE_AFTER_S)
    for lock, age in ages.items():
        log.warning(
            "%s is %.0f min old: a DeepSpeed op build was killed there, and DeepSpeed waits for that file to go "
            "without a timeout. If no build is running, delete it (or set TORCH_EXTENSIONS_DIR to a fresh directory).",
            lock,
            age / 60,
        )
    return list(ages)


def _lock_ages(root: Path | None, older_than_s: float) -> dict[Path, float]:
    """Each DeepSpeed build lock under ``root`` older than ``older_than_s``, with its age in seconds."""
    root = extensions_root() if root is None else root
    now = time.time()
    ages = {}
    for lock in sorted(root.glob("*/deepspeed*/lock")) + sorted(root.glob("deepspeed*/lock")):
        try:
            age = now - lock.stat().st_mtime
        except FileNotFoundError:  # the build finished while we looked
            continue
        if age > older_than_s:
            ages[lock] = age
    return ages


def build_cpu_comm_op() -> bool:
    """Build (or find cached) the CPU accelerator's shared-memory collective op now, in this one process, as
    DeepSpeed's process-group start would; returns whether the op applies here. Run it before starting
    several ranks at once, so that no rank can be killed while it holds the build lock."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return False
    warn_stale_build_locks()
    builder.load(verbose=False)
    return True


if __name__ == "__main__":  # `python -m mta_moe.training.op_build`: what `make setup` runs
    print(f"DeepSpeed CPU comm op {'built' if build_cpu_comm_op() else 'not applicable'} in {extensions_root()}")
