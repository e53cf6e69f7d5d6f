"""Per-task merged exports against the MTA model they come from: predictions, scores, size and speed, in one run.

For every task of an MTA export (every task type when it routes by type), ``mta_moe.merging.export_task`` writes
a stock Hugging Face folder; the folder is loaded with ``AutoModelForSeq2SeqLM`` / ``AutoModelForCausalLM`` and
``AutoTokenizer`` (what a server without mta_moe would do) and generates greedily for that task's rows, as does
the MTA model. Per task: the rows whose predictions are identical, both primary scores, the parameters, and the
median time of one generation pass over the task's rows (both models timed round-robin in the same process).
Usage: python benchmarks/plain_export.py --model runs/demo/stage1/export --data runs/demo/stage1/data/suite/test.jsonl
       --out benchmarks/results/plain_export.json [--work DIR] [--repeats 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from measure import environment, interleaved_medians, write_json
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from mta_moe.data import load_examples, tokenize_examples
from mta_moe.evaluation.commands import generation_settings
from mta_moe.evaluation.generation import causal_prompt, generate_predictions
from mta_moe.evaluation.scoring import evaluate_rows, load_export
from mta_moe.merging import export_task
from mta_moe.metrics import score_predictions


def run_lengths(model_dir: Path) -> tuple[int, int]:
    """(max input length, max new tokens) of the run the export came from, as ``mta-moe evaluate`` takes them."""
    args = argparse.Namespace(model=str(model_dir), max_input_length=None, max_new_tokens=None)
    generation_settings(args)
    return args.max_input_length, args.max_new_tokens


def plain_predictions(
    model, tokenizer, inputs: list[str], batch_size: int, max_input_length: int, max_new_tokens: int
) -> list[str]:
    """Greedy generations of a stock model for raw input texts, as a user of the stock folder would run it."""
    texts = []
    encoder_decoder = model.config.is_encoder_decoder
    tokenizer.padding_side = "right" if encoder_decoder else "left"
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            enc = tokenizer(
                inputs[start : start + batch_size],
                truncation=True,
                max_length=max_input_length,
                padding=True,
                return_tensors="pt",
            ).to(model.device)
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id
            )
            if not encoder_decoder:
                out = out[:, enc.input_ids.shape[1] :]
            texts += tokenizer.batch_decode(out, skip_special_tokens=True)
    return texts


def benchmark_key(export, rows, key: str, folder: Path, args, lengths: tuple[int, int]) -> dict:
    """Export one routing key, then compare the stock model with the MTA model on its rows."""
    by_task = export.model.mta_config.route_by == "task"
    record = export_task(
        export.model,
        folder,
        task=key if by_task else None,
        task_type=None if by_task else key,
        tokenizer_dir=args.model,
        source=str(args.model),
    )
    subset = rows.filter(lambda r: (r["task"] if by_task else r["type"]) == key)
    auto = AutoModelForSeq2SeqLM if export.model.config.is_encoder_decoder else AutoModelForCausalLM
    stock = auto.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    max_in, max_new = lengths
    tokenized, _ = tokenize_examples(subset, export.tokenizer, export.registry, max_in, max_new, export.mode)
    inputs = list(subset["input"])

    def mta() -> list[str]:
        return generate_predictions(
            export.model,
            tokenized,
            export.tokenizer,
            export.collator(),
            args.batch_size,
            max_new,
            lockstep=False,
            device=torch.device("cpu"),
            prompt_only=causal_prompt if export.mode == "causal" else None,
        )

    def plain() -> list[str]:
        return plain_predictions(stock, tokenizer, inputs, args.batch_size, max_in, max_new)

    ours, theirs = mta(), plain()
    kinds = {t: export.profiles[t]["kind"] for t in set(subset["task"])}
    labels = {t: export.profiles[t]["labels"] for t in set(subset["task"])}
    scores = [
        score_predictions(list(subset["task"]), list(subset["target"]), preds, kinds, export.registry.type_of, labels)[
            "macro"
        ]
        for preds in (ours, theirs)
    ]
    times = interleaved_medians({"mta": mta, "plain": plain}, repeats=args.repeats, warmup=0, device="cpu")
    size = sum(f.stat().st_size for f in folder.iterdir() if f.name.endswith(".safetensors"))
    return {
        "key": key,
        "rows": len(subset),
        "identical_predictions": sum(a == b for a, b in zip(ours, theirs)),
        "mta_score": scores[0],
        "plain_score": scores[1],
        "mta_ms": times["mta"],
        "plain_ms": times["plain"],
        "speedup": times["mta"] / times["plain"],
        "plain_parameters": record["parameters"],
        "plain_safetensors_bytes": size,
        "ffn_widths": record["ffn_widths"],
        "max_abs_output_difference": record["max_abs_output_difference"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an MTA export written by the trainer")
    parser.add_argument("--data", type=Path, required=True, help="canonical-format rows (e.g. the test split)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, help="where the stock folders go (default: a temporary directory)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    export = load_export(args.model)
    export.model.eval()
    rows, _ = load_examples(args.data, export.registry.task_types)
    lengths = run_lengths(args.model)
    mta_params = sum(p.numel() for p in export.model.parameters())
    full = evaluate_rows(export, rows, args.batch_size, *lengths)
    work = args.work or Path(tempfile.mkdtemp(prefix="plain_export."))
    results = [
        benchmark_key(export, rows, key, work / key, args, lengths)
        for key in export.model.mta_config.routing_keys
        if key in set(rows["task"]) | set(rows["type"])
    ]
    write_json(
        args.out,
        {
            "environment": environment("cpu"),
            "model": str(args.model),
            "data": str(args.data),
            "mta_parameters": mta_params,
            "mta_macro_all_rows": full["macro"],
            "keys": results,
            "all_identical": all(r["identical_predictions"] == r["rows"] for r in results),
        },
    )
    for r in results:
        print(
            f"{r['key']:<14} rows {r['rows']:>4}  identical {r['identical_predictions']:>4}  "
            f"score {r['mta_score']:.3f} / {r['plain_score']:.3f}  time {r['mta_ms']:.0f} / {r['plain_ms']:.0f} ms "
            f"({r['speedup']:.2f}x)"
        )


if __name__ == "__main__":
    main()
