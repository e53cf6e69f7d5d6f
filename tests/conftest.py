"""Shared test setup: DeepSpeed's CPU accelerator and small helpers."""

import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
# Tests never reach a model or data hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# DeepSpeed's CPU op is built into this environment's own cache, before any test starts ranks (see pytest_sessionstart)
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))


def pytest_sessionstart(session) -> None:
    """Build DeepSpeed's shared-memory op once, here: otherwise the first tests' ranks race to build it under a
    test timeout, and a rank killed mid-build leaves a lock every later DeepSpeed start waits on forever."""
    from mta_moe.training import op_build

    for lock in op_build.stale_build_locks():
        lock.unlink(missing_ok=True)  # a killed build of an earlier session (this cache is the tests' own)
    op_build.build_cpu_comm_op()
