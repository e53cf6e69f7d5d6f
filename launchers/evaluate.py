"""Score a saved MTA model on canonical-format data, per task:
``python launchers/evaluate.py --model runs/demo/stage2/export --data test.jsonl [--chance suite.json] [--out scores.json]``.

Generation settings (input length, new tokens) default to those of the training run the export came from.
Each task is scored by its kind (recorded in the export's tasks.json at training time): accuracy and
macro-F1 for classification, exact match and token F1 for extraction, ROUGE-L F (plus exact match and
token F1) for generation. See ``mta_moe.evaluation.metrics`` for the text normalisation.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mta_moe.data import DataError
from mta_moe.evaluation.scoring import evaluate_export, format_table, load_chance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an export directory (stage 1 or 2)")
    parser.add_argument("--data", required=True, help="JSONL / JSON / CSV / Parquet in the canonical format")
    parser.add_argument("--chance", help="suite.json of the bundled suite: adds chance levels to the table")
    parser.add_argument("--out", help="write the scores as JSON here")
    parser.add_argument("--predictions", help="write each example's generated text here (JSONL)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-input-length", type=int, help="default: the training run's, else 128")
    parser.add_argument("--max-new-tokens", type=int, help="default: the training run's, else 32")
    args = parser.parse_args(argv)
    try:
        generation_settings(args)
        chance = {}
        if args.chance:
            chance = load_chance(args.chance)
        result = evaluate_export(args.model, args.data, args.batch_size, args.max_input_length, args.max_new_tokens,
                                 predictions_path=args.predictions)
    except (DataError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result, chance))
    if args.out:
        scores = {task: m["primary"] for task, m in result["tasks"].items()}
        scores["macro"] = result["macro"]
        Path(args.out).write_text(json.dumps({"scores": scores, "metrics": result["tasks"], "kinds": result["kinds"],
                                              "by_type": result.get("by_type", {}), "chance": chance}, indent=2) + "\n")
    return 0


def generation_settings(args: argparse.Namespace) -> None:
    """Fill unset lengths from the run_config.json of the run the export came from (its parent directory)."""
    run_config = Path(args.model).resolve().parent / "run_config.json"
    mta = json.loads(run_config.read_text()).get("mta", {}) if run_config.is_file() else {}
    if args.max_input_length is None:
        args.max_input_length = mta.get("data", {}).get("max_input_length", 128)
    if args.max_new_tokens is None:
        args.max_new_tokens = mta.get("train", {}).get("max_new_tokens", 32)


if __name__ == "__main__":
    sys.exit(main())
