"""Score a saved MTA model on canonical-format data, per task:
``python launchers/evaluate.py --model runs/demo/stage2/export --data test.jsonl [--chance suite.json] [--out scores.json]``.

Metric: exact match of normalised greedy generations (accuracy for label tasks); see
``mta_moe.training.evaluation`` for the normalisation.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mta_moe import MTAModel
from mta_moe.data import Collator, DataError, TaskRegistry, load_examples, load_tokenizer, tokenize_examples
from mta_moe.training.evaluation import causal_prompt, evaluate_generation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an export directory (stage 1 or 2)")
    parser.add_argument("--data", required=True, help="JSONL / JSON / CSV / Parquet in the canonical format")
    parser.add_argument("--chance", help="suite.json of the bundled suite: adds chance levels to the table")
    parser.add_argument("--out", help="write the scores as JSON here")
    parser.add_argument("--predictions", help="write each example's generated text here (JSONL)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-input-length", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        scores = evaluate(args)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chance = {}
    if args.chance:
        chance = {t: v["chance"] for t, v in json.loads(Path(args.chance).read_text())["tasks"].items()}
    print(f"{'task':<16}{'score':>8}{'chance':>8}")
    for task, score in scores.items():
        level = f"{chance[task]:.3f}" if task in chance else ""
        print(f"{task:<16}{score:>8.3f}{level:>8}")
    if args.out:
        Path(args.out).write_text(json.dumps({"scores": scores, "chance": chance}, indent=2) + "\n")
    return 0


def evaluate(args: argparse.Namespace) -> dict[str, float]:
    export = Path(args.model)
    tasks_file = export / "tasks.json"
    if not tasks_file.is_file():
        raise FileNotFoundError(f"{tasks_file}: missing; --model must be an export written by launchers/train.py")
    tasks = json.loads(tasks_file.read_text())
    registry = TaskRegistry(tasks["task_types"], tasks["tasks"])
    model = MTAModel.from_pretrained(export)
    tokenizer = load_tokenizer(export)
    dataset, report = load_examples(args.data, registry.task_types)
    registry.check_known(args.data, dataset["task"])
    mode = "seq2seq" if model.config.is_encoder_decoder else "causal"
    tokenized, _ = tokenize_examples(dataset, tokenizer, registry, args.max_input_length, args.max_new_tokens, mode)
    collate = Collator(tokenizer.pad_token_id, mode, "right" if mode == "seq2seq" else "left")
    prompt_only = causal_prompt if mode == "causal" else None
    predictions: list[str] = []
    scores = evaluate_generation(model, tokenized, tokenizer, collate, args.batch_size, args.max_new_tokens,
                                 lockstep=False, device=torch.device("cpu"), prompt_only=prompt_only,
                                 predictions=predictions)
    if args.predictions:
        Path(args.predictions).write_text("".join(
            json.dumps({"task": row["task"], "target": row["target"], "prediction": text}) + "\n"
            for row, text in zip(dataset, predictions)))
    return scores


if __name__ == "__main__":
    sys.exit(main())
