"""Timing and peak-memory helpers shared by the benchmarks (medians of interleaved runs)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_medians(fns: dict[str, Callable[[], None]], repeats: int, warmup: int, device: str) -> dict[str, float]:
    """Median wall time (ms) of each function; repeats run round-robin so drifts of a shared machine hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def peak_memory_mb(fn: Callable[[], None], device: str) -> float:
    """Peak of the memory allocated while ``fn`` runs, above what was allocated before (MiB).

    CUDA: the caching allocator's peak statistic. CPU: the running sum of the allocations and frees
    the PyTorch profiler records, in time order.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = sorted(
        (e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage != 0
    )
    current = peak = 0
    for _, delta in changes:
        current += delta
        peak = max(peak, current)
    return peak / 2**20


def environment(device: str) -> dict:
    """What the numbers were measured on."""
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "cpu": platform.processor() or platform.machine(),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    env.update({key: value for key, value in os.environ.items() if key.startswith("MALLOC_")})
    return env


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
