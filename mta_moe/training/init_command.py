"""``mta-moe init``: a stage-1 and a stage-2 config for the user's own data files, from the shipped configs.

What the data decides (read from its rows with the same strict reader training uses): the task types, one adapter
per task (``route_by: task``), the training budget and evaluation cadence (scaled to the training rows), the
length limits (from the rows' lengths in words); everything else is the shipped config's. The bundled suite and
its curriculum are dropped. Both files are written together or not at all, and checked as ``train`` would check
them before anything is written."""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

SPLITS = ("train", "validation", "test")
EPOCHS = 8  # the shipped budget: 2600 steps of 32 over 9 tasks x 1000 rows (curriculum included) is ~8 passes
# a pretrained backbone (mta.model.backbone) is fine-tuned, not trained: the shipped encoder budget, 800 steps of 32
# over 6 tasks x 1000 rows, is ~4 passes
EPOCHS_PRETRAINED = 4
MIN_STEPS, MAX_STEPS = 300, 20000
PIECES_PER_WORD = 2.0  # a 1000-piece sentencepiece vocabulary splits a word into ~1.3-2 pieces


def shipped_configs() -> tuple[Path, Path] | None:
    """The repository's ds_configs/stage1.json and stage2.json (a source checkout), else None."""
    root = Path(__file__).resolve().parents[2] / "ds_configs"
    pair = (root / "stage1.json", root / "stage2.json")
    return pair if all(p.is_file() for p in pair) else None


def profile_rows(files: dict[str, list[str]]) -> dict[str, Any]:
    """Tasks (first-seen order), types, rows per split, the 99th-percentile input/target length in words and the
    training rows (task, input, target)."""
    from ..data.formats import load_examples

    tasks: dict[str, str] = {}
    rows: dict[str, int] = {}
    seen: dict[str, set[str]] = {}
    inputs: list[int] = []
    targets: list[int] = []
    train_rows: list[tuple[str, str, str]] = []
    for split, paths in files.items():
        rows[split] = 0
        for path in paths:
            data, _ = load_examples(path, None)
            rows[split] += len(data)
            for row in data:
                known = tasks.setdefault(row["task"], row["type"])
                if known != row["type"]:
                    raise ValueError(
                        f"{path}: task {row['task']!r} has rows of type {known!r} and "
                        f"{row['type']!r}; a task has one type"
                    )
                seen.setdefault(split, set()).add(row["task"])
                if split == "train":
                    inputs.append(len(row["input"].split()))
                    targets.append(len(row["target"].split()))
                    train_rows.append((row["task"], row["input"], row["target"]))
    for split in ("validation", "test"):
        unseen = sorted(seen.get(split, set()) - seen.get("train", set()))
        if unseen:
            raise ValueError(f"{files[split][0]}: task {unseen[0]!r} has no training rows")
    return {
        "tasks": [t for t in tasks if t in seen.get("train", ())],
        "types": list(dict.fromkeys(tasks.values())),
        "rows": rows,
        "input_words": _percentile(inputs, 0.99),
        "target_words": _percentile(targets, 0.99),
        "train_rows": train_rows,  # (task, input, target): an encoder template infers each task's kind from them
    }


def _percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else 0


def _round(value: float, to: int) -> int:
    return int(math.ceil(value / to) * to)


def derive(
    stage1: dict[str, Any], stage2: dict[str, Any], files: dict[str, list[str]], profile: dict[str, Any], out: Path
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The two configs for this data, and one line per setting the data decided (what and why). An encoder
    template (BERT, RoBERTa) with a task that is not classification is refused here, as training would."""
    from ..metrics import profile_tasks
    from .heads_setup import refuse_unclassifiable
    from .model_factory import ENCODER_ONLY, backbone_model_type

    s1, s2 = copy.deepcopy(stage1), copy.deepcopy(stage2)
    model_type = backbone_model_type(s1["mta"].get("model") or {})
    if model_type in ENCODER_ONLY:
        refuse_unclassifiable(profile_tasks(*(list(c) for c in zip(*profile["train_rows"]))), model_type)
    batch = s1.get("train_micro_batch_size_per_gpu", 32) * s1.get("gradient_accumulation_steps", 1)
    n_tasks, n_train = len(profile["tasks"]), profile["rows"]["train"]
    pretrained = bool((s1["mta"].get("model") or {}).get("backbone"))
    epochs = EPOCHS_PRETRAINED if pretrained else EPOCHS
    steps = min(MAX_STEPS, max(MIN_STEPS, _round(epochs * n_train / batch, 100)))
    every = max(50, _round(steps / 5, 50))
    stage2_steps = max(100, _round(steps / 8, 50))
    max_in = min(512, max(32, _round(PIECES_PER_WORD * profile["input_words"] + 8, 8)))
    max_out = min(256, max(8, _round(PIECES_PER_WORD * profile["target_words"] + 4, 8)))
    data = {"suite": None, "curriculum": None, "files": files, "max_input_length": max_in, "max_target_length": max_out}
    mta = s1["mta"]
    mta.update(
        task_types=profile["types"],
        route_by="task",
        tasks=profile["tasks"],
        num_experts=n_tasks,
        task_adapter_assignment=None,
    )
    mta["data"].update(data)
    mta["train"].update(
        steps=steps,
        eval_every=every,
        save_every=every,
        output_dir=str(out / "stage1"),
        warmup_steps=min(mta["train"].get("warmup_steps", 50), steps // 20),
    )
    s2["mta"]["data"].update(data)
    s2["mta"]["train"].update(
        steps=stage2_steps,
        eval_every=max(50, stage2_steps // 2),
        save_every=max(50, stage2_steps // 2),
        output_dir=str(out / "stage2"),
        init_from=str(out / "stage1" / "export"),
    )
    why = [
        f"tasks: {n_tasks} ({', '.join(profile['tasks'])}), one adapter each (mta.route_by task, "
        f"mta.num_experts {n_tasks})",
        f"task types: {profile['types']}",
        "rows: " + ", ".join(f"{s} {n}" for s, n in profile["rows"].items()),
        f"stage 1: {steps} steps of {batch} (about {epochs} passes over the training rows"
        + (", fine-tuning the pretrained backbone" if pretrained else "")
        + f", within {MIN_STEPS}-{MAX_STEPS}), validation and checkpoints every {every}",
        f"stage 2: {stage2_steps} steps from stage 1's export",
        f"length limits: input {max_in}, target {max_out} tokens (99th percentile {profile['input_words']} / "
        f"{profile['target_words']} words x {PIECES_PER_WORD} pieces; rows over them are truncated)",
    ]
    if "validation" not in files:
        why.append(
            "no validation file: no validation scores during training and no best checkpoint; pass "
            "--validation to have them"
        )
    return s1, s2, why


def write_pair(configs: dict[Path, dict[str, Any]], overwrite: bool) -> None:
    """Write every file or none: all are refused if one exists (without ``overwrite``), then each is written to a
    temporary name and renamed."""
    existing = [str(p) for p in configs if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]}: already exists; pass --overwrite to replace it")
    temps = []
    try:
        for path, cfg in configs.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(cfg, indent=2) + "\n")
            temps.append((tmp, path))
        for tmp, path in temps:
            tmp.replace(path)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)


def init_command(args: argparse.Namespace, _: Sequence[str] = ()) -> int:
    """Exit 0 after writing OUT/stage1.json and OUT/stage2.json, or 2 with one ``error:`` line."""
    from ..config import ConfigError
    from ..config_files import read_config_file
    from ..data.formats import DataError
    from .run_config import build_run_config

    try:
        if bool(args.from_stage1) != bool(args.from_stage2):
            raise ConfigError("init: --from and --from-stage2 go together (the stage-1 and stage-2 configs)")
        templates = (Path(args.from_stage1), Path(args.from_stage2)) if args.from_stage1 else shipped_configs()
        if templates is None:
            raise ConfigError(
                "init: no shipped configs next to this installation; pass --from STAGE1.json --from-stage2 STAGE2.json"
            )
        stage1, stage2 = (read_config_file(p) for p in templates)
        files = {
            split: [str(Path(p).resolve()) for p in getattr(args, split)] for split in SPLITS if getattr(args, split)
        }
        out = Path(args.out).resolve()
        s1, s2, why = derive(stage1, stage2, files, profile_rows(files), out)
        for cfg, path in ((s1, out / "stage1.json"), (s2, out / "stage2.json")):
            build_run_config(cfg, str(path))
        write_pair({out / "stage1.json": s1, out / "stage2.json": s2}, args.overwrite)
    except (ConfigError, DataError, ValueError, FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'stage1.json'} and {out / 'stage2.json'}:")
    print("\n".join(f"  {line}" for line in why))
    print(
        "next:\n"
        f"  mta-moe train --deepspeed {out / 'stage1.json'}\n"
        f"  mta-moe train --deepspeed {out / 'stage2.json'}   # optional: see README, Stage 2\n"
        f"  mta-moe export --model {out / 'stage1' / 'export'} --all --out {out / 'per_task'}"
    )
    return 0
