"""``mta-moe compare`` and ``mta-moe affinity``."""

from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Sequence

from ..config import ConfigError
from ..config_files import read_config_file


def compare_command(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """Train (or reuse) every system and write the report; one ``error:`` line and exit 2 on bad input."""
    from ..data.formats import DataError
    from ..training.run_config import apply_overrides, build_run_config

    try:
        stage1 = read_config_file(Path(args.config))
        apply_overrides(stage1, overrides)
        build_run_config(stage1, "compare --config")  # checked before the heavy imports: a typo is reported at once
        stage2 = None
        if args.stage2:
            stage2 = read_config_file(Path(args.stage2))
            apply_overrides(stage2, overrides)
            build_run_config(_with_init_from(stage2), "compare --stage2")
        from .compare import compare
        from .plan import Variant

        temperatures = [float(t) for t in args.ablate_temperature.split(",") if t.strip()]
        seeds = [_seed(s) for s in args.seeds.split(",") if s.strip()]
        variants = [_variant(name, words, Variant) for name, words in args.variant]
        launcher = shlex.split(args.launcher) if args.launcher else [sys.executable]
        report = compare(
            stage1,
            stage2,
            args.out,
            temperatures,
            args.ablate_freeze,
            args.threshold,
            launcher,
            variants=variants,
            single_task_budget=args.single_task_budget,
            single_task=not args.no_single_task,
            seeds=seeds,
            device=args.device,
            steps=args.steps,
            patience=args.patience,
            eval_every=args.eval_every,
            overwrite=args.overwrite,
        )
    except (ConfigError, DataError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/report/report.md")
    from ..evaluation.systems import recommendation

    verdict = recommendation(report["summary"])
    if verdict:
        print(f"on this data: {verdict}")
    for name, tasks in report["negative_transfer"].items():
        if tasks:
            print(f"negative transfer in {name}: {', '.join(tasks)}")
    return 0


def _with_init_from(stage2: dict) -> dict:
    """``stage2`` as compare runs it: starting from the comparison's stage 1 (any path will do for the checks)."""
    checked = copy.deepcopy(stage2)
    train = checked.setdefault("mta", {}).setdefault("train", {})
    if isinstance(train, dict):
        train["init_from"] = train.get("init_from") or "<the comparison's stage 1>"
    return checked


def _seed(text: str) -> int:
    if not text.strip().isdigit():
        raise ConfigError(f"--seeds: expected comma-separated integers >= 0, got {text!r}")
    return int(text)


def _variant(name: str, words: str, variant_cls):
    label, _, stage = name.partition(":")
    if not label.replace("_", "").replace("-", "").isalnum() or stage not in ("", "1", "2"):
        raise ConfigError(f"--variant {name!r}: expected NAME or NAME:2 (letters, digits, - and _)")
    overrides = []
    for chunk in re.split(r"\s+(?=--)", words.strip()):  # "--key value" pairs; a value may hold spaces (JSON)
        key, _, value = chunk.partition(" ")
        if not key.startswith("--") or not value.strip():
            raise ConfigError(f"--variant {name}: expected '--key value ...', got {chunk!r}")
        overrides += [key, value.strip()]
    return variant_cls(label, int(stage or 1), overrides)


def affinity_command(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """Measure affinity, group the tasks, write affinity.json, its heatmap and a stage-1 config that routes by
    task with one adapter per group (``out/stage1_affinity.json``)."""
    from ..data.formats import DataError
    from ..training.run_config import apply_overrides, build_run_config

    try:
        raw = read_config_file(Path(args.config))
        apply_overrides(raw, overrides)
        cfg = build_run_config(raw, args.config)  # checked before the heavy imports: a typo is reported at once
        from .affinity import assignment_config, group_tasks
        from .probe import ProbeSettings, run_probe, write_affinity

        settings = ProbeSettings()  # (the counts are integers >= 1: the parser checks them)
        if args.probe_steps is not None:
            settings.steps = args.probe_steps
        if args.every is not None:
            settings.every = args.every
        settings.rows, settings.horizon = args.rows, args.horizon
        out = Path(args.out)
        affinity = run_probe(cfg, out, settings, export=args.model)
        groups = group_tasks(affinity.tasks, affinity.normalised(), args.threshold, args.max_groups)
        layer_keys = assignment_config(groups, cfg.mta.ep_size)
        path = write_affinity(
            affinity,
            groups,
            layer_keys,
            out,
            {
                "probe_steps": None if args.model else settings.steps,
                "every": settings.every,
                "rows": settings.rows,
                "model": args.model,
                "threshold": args.threshold,
                "horizon": settings.horizon,
            },
        )
        raw["mta"].update(layer_keys)
        config = out / "stage1_affinity.json"
        config.write_text(json.dumps(raw, indent=2) + "\n")
        build_run_config(json.loads(config.read_text()), str(config))  # what was written trains
    except (ConfigError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"groups (one adapter each): {groups}")
    print(f"wrote {path}, {path.with_suffix('.png')} and {config}")
    return 0
