"""Train and compare, on the same data, budget and seed: one single-task model per task, a fully shared
multi-task model, MTA stage 1 and MTA stage 2 (plus ablations), then write the report:
``python launchers/compare.py --config ds_configs/stage1.json --stage2 ds_configs/stage2.json --out runs/compare``.

Finished runs whose resolved config matches are reused, so a rerun only trains what changed. Overrides
(``--train.steps 300``) apply to both configs.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

from mta_moe.config import ConfigError, read_config_file
from mta_moe.data import DataError
from mta_moe.evaluation.compare import Variant, compare
from mta_moe.evaluation.report import DEFAULT_THRESHOLD
from mta_moe.training.run_config import apply_overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the stage-1 DeepSpeed JSON with its mta section")
    parser.add_argument("--stage2", help="the stage-2 config (init_from is set to this comparison's stage 1)")
    parser.add_argument("--out", required=True, help="directory for every run and the report (out/report)")
    parser.add_argument("--ablate-temperature", default="", metavar="T1,T2",
                        help="extra stage-1 runs with these Softmax-T temperatures")
    parser.add_argument("--ablate-freeze", action="store_true",
                        help="an extra stage-2 run with nothing frozen")
    parser.add_argument("--variant", nargs=2, action="append", default=[], metavar=("NAME[:2]", "OVERRIDES"),
                        help="an extra MTA run: stage 1 (or stage 2 with NAME:2) with these overrides, e.g. "
                             "--variant pcgrad '--train.gradient_projection pcgrad'")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="flag negative transfer when a delta is below -threshold")
    parser.add_argument("--launcher", default=shlex.join([sys.executable]),
                        help="how each run is started, e.g. 'deepspeed --num_gpus 4' (default: this python)")
    args, overrides = parser.parse_known_args(argv)
    try:
        stage1 = read_config_file(Path(args.config))
        apply_overrides(stage1, overrides)
        stage2 = None
        if args.stage2:
            stage2 = read_config_file(Path(args.stage2))
            apply_overrides(stage2, overrides)
        temperatures = [float(t) for t in args.ablate_temperature.split(",") if t.strip()]
        variants = [_variant(name, words) for name, words in args.variant]
        report = compare(stage1, stage2, args.out, temperatures, args.ablate_freeze, args.threshold,
                         shlex.split(args.launcher), variants=variants)
    except (ConfigError, DataError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/report/report.md")
    for name, tasks in report["negative_transfer"].items():
        if tasks:
            print(f"negative transfer in {name}: {', '.join(tasks)}")
    return 0


def _variant(name: str, words: str) -> Variant:
    label, _, stage = name.partition(":")
    if not label.replace("_", "").replace("-", "").isalnum() or stage not in ("", "1", "2"):
        raise ConfigError(f"--variant {name!r}: expected NAME or NAME:2 (letters, digits, - and _)")
    overrides = []
    for chunk in re.split(r"\s+(?=--)", words.strip()):  # "--key value" pairs; a value may hold spaces (JSON)
        key, _, value = chunk.partition(" ")
        if not key.startswith("--") or not value.strip():
            raise ConfigError(f"--variant {name}: expected '--key value ...', got {chunk!r}")
        overrides += [key, value.strip()]
    return Variant(label, int(stage or 1), overrides)


if __name__ == "__main__":
    sys.exit(main())
