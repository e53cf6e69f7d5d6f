"""Training throughput of the demo model: this tree against another revision, side by side in one run.

Each tree trains the demo's stage 1 (``ds_configs/stage1.json``: the bundled suite, the tiny T5, ZeRO as
configured) through the DeepSpeed launcher for a short and a long run, no validation or checkpoint in
between; the time per step is ``(wall(long) - wall(short)) / (long - short)``, so start-up (imports, data,
engine) cancels out. Runs alternate between the trees (baseline, current, baseline, current, ...) so drifts
of a shared machine hit both alike; the median over ``--repeats`` is reported. Where both trees train on the same
batches (same config, seed and sampler), the ratio of step times is the ratio of tokens per second; where their
configs differ (another demo config, ``mta.data.group_by_length``), compare ``tokens_per_s``: the median of the
input tokens per second each trainer logs over the long run's steps after ``--short``.
Usage: python benchmarks/trainer_throughput.py [--baseline REV] [--short 40] [--long 240] [--repeats 3]
       [--set KEY=VALUE ...] [--set-current KEY=VALUE ...] [--out F.json]
A knob against its absence: --baseline HEAD --set-current data.group_by_length=8 (this tree, committed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import environment, write_json

REPO = Path(__file__).resolve().parent.parent


def _deepspeed() -> str:
    local = Path(sys.executable).parent / "deepspeed"
    return str(local) if local.exists() else "deepspeed"


def train_seconds(tree: Path, steps: int, out: Path, port: int, extra: list[str]) -> tuple[float, list[dict]]:
    """Wall time of one launcher run of ``steps`` steps in ``tree``; also its train records."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        _deepspeed(),
        "--num_gpus",
        "1",
        "--master_port",
        str(port),
        "--module",
        "mta_moe.cli",
        "train",
        "--deepspeed",
        "ds_configs/stage1.json",
        "--train.steps",
        str(steps),
        "--train.output_dir",
        str(out),
        "--train.eval_every",
        "1000000",
        "--train.save_every",
        "1000000",
        "--train.log_every",
        "20",
        "--data.curriculum",
        "null",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(tree), "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"training in {tree} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return seconds, [r for r in records if r["kind"] == "train"]


def baseline_tree(rev: str, root: Path) -> Path:
    """A detached worktree of ``rev`` under ``root`` (removed by :func:`drop_tree`)."""
    path = root / "baseline"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), rev], cwd=REPO, check=True, capture_output=True, text=True
    )
    return path


def drop_tree(path: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, capture_output=True, text=True)


def _options(items: list[str]) -> list[str]:
    """``KEY=VALUE`` items as the trainer's ``--KEY VALUE`` arguments."""
    return [part for item in items for part in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="git revision to compare against (default: this tree alone)")
    parser.add_argument("--short", type=int, default=40)
    parser.add_argument("--long", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra trainer options for both trees, e.g. zero_optimization.stage=0",
    )
    parser.add_argument(
        "--set-current", nargs="*", default=[], metavar="KEY=VALUE", help="extra trainer options for this tree only"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/trainer_throughput.json"))
    args = parser.parse_args()
    extra, current_extra = _options(args.set), _options(args.set_current)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        trees = {"current": REPO}
        if args.baseline:
            trees = {"baseline": baseline_tree(args.baseline, root), **trees}
        per_step: dict[str, list[float]] = {name: [] for name in trees}
        rates: dict[str, list[float]] = {name: [] for name in trees}
        last: dict[str, dict] = {}
        try:
            for repeat in range(args.repeats):
                for i, (name, tree) in enumerate(trees.items()):
                    port = 29700 + 2 * i
                    options = extra + (current_extra if name == "current" else [])
                    short, _ = train_seconds(tree, args.short, root / f"{name}_short", port, options)
                    long, records = train_seconds(tree, args.long, root / f"{name}_long", port, options)
                    per_step[name].append((long - short) / (args.long - args.short))
                    last[name] = records[-1] if records else {}
                    rates[name] += [r["tokens_per_s"] for r in records if r["step"] > args.short]
                    print(
                        f"repeat {repeat}: {name} {1e3 * per_step[name][-1]:.1f} ms/step, "
                        f"{statistics.median(rates[name]):.0f} tokens/s",
                        flush=True,
                    )
        finally:
            if args.baseline:
                drop_tree(trees["baseline"])
    ms = {name: 1e3 * statistics.median(values) for name, values in per_step.items()}
    # start-up varies by a second or so between runs: runs too close in length cannot resolve a step
    resolved = all(v > 0 for values in per_step.values() for v in values)
    if not resolved:
        print("warning: a per-step time came out <= 0: --long - --short is too small to resolve a step", flush=True)
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": environment("cpu" if os.environ.get("DS_ACCELERATOR", "cpu") == "cpu" else "cuda"),
        "ms_per_step": ms,
        "samples_ms": {k: [1e3 * v for v in vals] for k, vals in per_step.items()},
        "tokens_per_s": {name: statistics.median(values) for name, values in rates.items()},
        "resolved": resolved,
        "last_loss": {name: rec.get("loss") for name, rec in last.items()},
    }
    if "baseline" in ms:
        result["speedup_vs_baseline"] = ms["baseline"] / ms["current"]
        tokens = result["tokens_per_s"]
        result["tokens_per_s_vs_baseline"] = tokens["current"] / tokens["baseline"]
        print(
            f"current {ms['current']:.1f} ms/step, baseline {ms['baseline']:.1f}: "
            f"{result['speedup_vs_baseline']:.2f}x per step; tokens/s {tokens['current']:.0f} against "
            f"{tokens['baseline']:.0f}: {result['tokens_per_s_vs_baseline']:.2f}x"
        )
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
