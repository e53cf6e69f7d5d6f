"""Write a per-task stock Hugging Face folder from an MTA export: config, safetensors, tokenizer; checked on write.

The folder loads with ``AutoModelForSeq2SeqLM`` / ``AutoModelForCausalLM`` / ``AutoModel`` (an encoder with task
heads: ``AutoModelForSequenceClassification``) and
``AutoTokenizer`` alone (no mta_moe, no custom code). ``mta_merge.json`` beside them records the source, the
routing key, each layer's adapters and weights, and the largest logit difference measured at export; ``README.md``
is its model card (Hub metadata: base model, datasets, the task's validation score from the source card).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..data.tokenizer import check_tokenizer, load_tokenizer
from ..modeling.inject import MTAModel
from ..modeling.persistence import write_files_together
from ..names import child_path
from .classifier import check_classifier_foldable, head_and_route, stock_classifier
from .fold import FoldResult, MergeError, fold_task
from .model_card import task_card
from .tokenizer import stock_tokenizer

MERGE_FILE = "mta_merge.json"
# largest |output difference| an export may show against the MTA model on the check inputs, relative to the
# largest |output| (at least 1): summation order differs between the folded and the routed computation
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9, torch.bfloat16: 2e-2, torch.float16: 5e-3}


@torch.no_grad()
def output_difference(
    model: MTAModel,
    plain: torch.nn.Module,
    route_id: int,
    batch: int = 4,
    length: int = 12,
    seed: int = 0,
    head_id: int | None = None,
) -> tuple[float, float]:
    """(largest |output difference|, largest |output|) of the MTA model (routed to ``route_id``) against ``plain``
    on random ids."""
    config = plain.config
    gen = torch.Generator().manual_seed(seed)
    ref = next(plain.parameters())
    ids = torch.randint(4, config.vocab_size, (batch, length), generator=gen).to(ref.device)
    mask = torch.ones_like(ids)
    mask[1, length // 2 :] = 0  # one padded row: the gate reads the first position, the fold must not care
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    if getattr(config, "is_encoder_decoder", False):
        decoder_ids = torch.randint(4, config.vocab_size, (batch, length // 2), generator=gen)
        kwargs["decoder_input_ids"] = decoder_ids.to(ref.device)
    routes = torch.full((batch,), route_id, dtype=torch.long, device=ref.device)
    by_task = model.mta_config.route_by == "task"
    ids = {"task_ids": routes} if by_task else {"task_type_ids": routes}
    if head_id is not None:  # a model with task heads: the head of the exported task
        ids["task_ids"] = torch.full_like(routes, head_id)
    was_training = model.training
    model.eval()
    try:
        mta_out = model(**kwargs, **ids)
    finally:
        model.train(was_training)
    plain_out = plain(**kwargs)[0].float()
    expected = mta_out[0].float()[..., : plain_out.shape[-1]]  # (task heads: the task's own classes)
    return float((expected - plain_out).abs().max()), float(expected.abs().max())


def export_task(
    model: MTAModel,
    out: str | Path,
    task: str | None = None,
    task_type: str | None = None,
    tokenizer_dir: str | Path | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Fold ``model`` for one task (or task type) and write the stock folder ``out`` (all files appear together).

    Args:
        model: the MTA model (ep_size 1).
        out: a new or empty directory.
        task, task_type: the routing key to fold (a task with ``route_by: task``, else a task type); a model with
            task heads names the task, and with ``route_by: type`` also the type it is routed by.
        tokenizer_dir: a tokenizer to copy in; source: where the model came from (for the card).

    Returns:
        The record written to ``mta_merge.json`` (routing key, adapters and weights per layer, FFN widths,
        parameters, the largest output difference).

    Raises:
        MergeError: no exact fold exists, or the folded model's outputs differ from the MTA model's by more than
            :data:`TOLERANCE` of the parameters' dtype (relative to the largest output); nothing is written.
    """
    head = None
    if model.task_heads is not None:  # an encoder with task heads: the task's stock sequence classifier
        check_classifier_foldable(model)
        head, task, task_type = head_and_route(model, task, task_type)
    result = fold_task(model, task=task, task_type=task_type)
    if head is not None:
        result.model = stock_classifier(model, result.model, head)
    route_id = model.mta_config.routing_keys.index(result.key)
    head_id = None if head is None else model.task_heads.tasks.index(head)
    diff, scale = output_difference(model, result.model, route_id, head_id=head_id)
    tolerance = TOLERANCE.get(next(result.model.parameters()).dtype, 1e-4) * max(1.0, scale)
    if not diff <= tolerance:
        raise MergeError(
            f"the folded model differs from the MTA model by {diff:.3g} (tolerance {tolerance:.3g}); "
            "nothing was written"
        )
    record = _record(result, diff, source, head)
    _write_folder(result, Path(out), record, tokenizer_dir, task_card(result.model, record, source))
    return record


def _record(result: FoldResult, diff: float, source: str | None, head: str | None) -> dict[str, Any]:
    return {
        "source": source,
        "route_by": result.route_by,
        "routing_key": result.key,
        **({} if head is None else {"task": head}),  # a classifier: the task whose head it carries
        "architecture": type(result.model).__name__,
        "ffn_widths": result.widths,
        "layers": {
            k: {"adapters": v.adapters, "weights": v.weights, "width": v.width} for k, v in result.layers.items()
        },
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "max_abs_output_difference": diff,
    }


def _write_folder(
    result: FoldResult, out: Path, record: dict[str, Any], tokenizer_dir: str | Path | None, card: str
) -> None:
    if out.exists() and any(out.iterdir()):
        raise MergeError(f"{out}: exists and is not empty; choose a new directory")

    def write(tmp: Path) -> None:
        result.model.save_pretrained(tmp)
        if tokenizer_dir is not None:
            stock_tokenizer(tokenizer_dir).save_pretrained(tmp)
        (tmp / MERGE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(card, encoding="utf-8")

    write_files_together(out, write)


def find_tokenizer(export_dir: Path) -> Path | None:
    """The tokenizer saved with an export (in it, or the run's ``tokenizer/`` beside it), if any."""
    for candidate in (export_dir, export_dir / "tokenizer", export_dir.parent / "tokenizer"):
        if (candidate / "tokenizer_config.json").is_file():
            return candidate
    return None


def export_command(args, _=()) -> int:
    """``mta-moe export``: one stock folder per named task / type (or per routing key with ``--all``)."""
    import sys

    try:
        model_dir = Path(args.model)
        model = MTAModel.from_pretrained(model_dir, ep_size=1).eval()
        tokenizer_dir = Path(args.tokenizer) if args.tokenizer else find_tokenizer(model_dir)
        if tokenizer_dir is None:
            raise MergeError(f"{model_dir}: no tokenizer found in the export or beside it; pass --tokenizer DIR")
        check_tokenizer(load_tokenizer(tokenizer_dir), model_dir, f"--tokenizer {tokenizer_dir}")
        targets = _targets(model, args, model_dir)
        out = Path(args.out)
        if len(targets) == 1:
            task, task_type = targets[0]
            _report(
                task or task_type,
                out,
                export_task(
                    model, out, task=task, task_type=task_type, tokenizer_dir=tokenizer_dir, source=str(model_dir)
                ),
            )
        else:
            _export_all(model, targets, out, tokenizer_dir, str(model_dir))
    except (MergeError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _export_all(
    model: MTAModel, targets: list[tuple[str | None, str | None]], out: Path, tokenizer_dir: Path, source: str
) -> None:
    """Every routing key into ``out/<key>``, all or nothing: the folders are written into a temporary folder beside
    ``out`` that becomes ``out`` once every one is checked and written."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MergeError(f"{out}: exists and is not an empty directory; choose a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        records = []
        for task, task_type in targets:
            name = task or task_type
            dest = child_path(staging, name)
            records.append(
                (
                    name,
                    export_task(
                        model, dest, task=task, task_type=task_type, tokenizer_dir=tokenizer_dir, source=source
                    ),
                )
            )
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for name, record in records:
        _report(name, out / name, record)


def _report(name: str, dest: Path, record: dict[str, Any]) -> None:
    print(
        f"{name}: {dest} ({record['architecture']}, {record['parameters']:,} parameters, FFN widths "
        f"{record['ffn_widths']}, max |Δ output| {record['max_abs_output_difference']:.2g})"
    )


def _targets(model: MTAModel, args, model_dir: Path) -> list[tuple[str | None, str | None]]:
    by_task = model.mta_config.route_by == "task"
    if model.task_heads is not None and not by_task:  # one classifier per task, routed by its type
        if args.type:
            raise MergeError("this model has one classification head per task: export a task (--task NAME or --all)")
        if not args.all and not args.task:
            _targets_missing()
        type_of = _task_types(model_dir)
        return [(name, type_of.get(name)) for name in (model.task_heads.tasks if args.all else [args.task])]
    if args.all:
        return [(key, None) if by_task else (None, key) for key in model.mta_config.routing_keys]
    if not args.task and not args.type:
        _targets_missing()
    return [(args.task, args.type)]


def _targets_missing() -> None:
    raise MergeError("name what to export: --task NAME, --type NAME or --all")


def _task_types(model_dir: Path) -> dict[str, str]:
    """Each task's type, from the export's tasks.json (written by the trainer)."""
    path = model_dir / "tasks.json"
    if not path.is_file():
        raise MergeError(f"{path}: missing; a model routed by type needs it to find each task's type")
    return dict(json.loads(path.read_text())["tasks"])
