"""``mta-moe``: one installed command for every job.

    mta-moe train --deepspeed ds_configs/stage1.json [--key value ...] [--resume]
    mta-moe evaluate --model EXPORT --data FILE [--chance suite.json] [--out scores.json]
    mta-moe report --system NAME=RUN ... --test FILE --out DIR
    mta-moe compare --config stage1.json [--stage2 stage2.json] --out DIR
    mta-moe affinity --config stage1.json --out DIR
    mta-moe export --model EXPORT --task NAME --out DIR
    mta-moe save-adapters --model EXPORT --backbone NAME_OR_DIR --out DIR
    mta-moe check-data FILE ...
    mta-moe init --train FILE [--validation FILE] [--test FILE] --out DIR

Also ``python -m mta_moe.cli ...``, ``deepspeed --module mta_moe.cli train ...`` and
``torchrun -m mta_moe.cli train ...``. Every subcommand imports what it needs when it runs, so ``--help``
is quick. Errors are one ``error:`` line on stderr and exit code 2 (check-data: 1, as before).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .config import finite_float, positive_int

_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help_text: str, handler: str):
    """Register ``name``: ``configure(parser)`` adds its arguments; ``handler`` is 'module:function'."""

    def wrap(configure: Callable[[argparse.ArgumentParser], None]):
        _COMMANDS[name] = (help_text, configure, handler)
        return configure

    return wrap


@command(
    "train",
    "train one MTA stage under DeepSpeed (stage 1, stage 2, or adding task types)",
    "mta_moe.training.launch:train_command",
)
def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--deepspeed", "--deepspeed_config", dest="config", required=True, help='DeepSpeed JSON with an "mta" section'
    )
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in mta.train.output_dir (without it, a new run there is refused)",
    )
    p.add_argument(
        "--resume-with-changes",
        metavar="KEY,...",
        help="with --resume: accept these changed settings (dotted keys, e.g. train.steps; data_files for "
        "changed data files); any other change since the run started is refused",
    )
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="with --resume: load a checkpoint this output directory's run did not write (DeepSpeed "
        "unpickles it: only for checkpoints you trust)",
    )
    p.epilog = (
        "Any further --key value pair overrides a config value: --mta.k 2, --train.steps 500, "
        "--train_micro_batch_size_per_gpu 4 (model., data., train. are short for mta.model. etc.)"
    )


@command(
    "evaluate", "score an export on canonical-format data, per task", "mta_moe.evaluation.commands:evaluate_command"
)
def _evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="an export directory (stage 1 or 2)")
    p.add_argument("--data", required=True, help="JSONL / JSON / CSV / Parquet in the canonical format")
    p.add_argument("--chance", help="suite.json of the bundled suite: adds chance levels to the table")
    p.add_argument("--out", help="write the scores as JSON here")
    p.add_argument("--predictions", help="write each example's generated text here (JSONL)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--max-input-length", type=positive_int, help="default: the training run's, else 128")
    p.add_argument("--max-new-tokens", type=positive_int, help="default: the training run's, else 32")
    p.add_argument(
        "--device",
        default="auto",
        help="where to generate and score: auto (a GPU when one is visible, else the CPU), cpu, cuda[:N]",
    )


@command(
    "report",
    "the multi-task report of finished runs (deltas, routing, calibration, loss curves)",
    "mta_moe.evaluation.commands:report_command",
)
def _report(p: argparse.ArgumentParser) -> None:
    from_eval = "a run directory (or export) to report on; repeat for each system"
    p.add_argument("--system", action="append", required=True, metavar="NAME=DIR", help=from_eval)
    p.add_argument("--test", required=True, help="canonical-format data scored for the table")
    p.add_argument("--validation", help="canonical-format data that fits the calibration temperatures")
    p.add_argument("--baseline", help="the system the deltas are taken against (default: none)")
    p.add_argument(
        "--threshold", type=finite_float, default=0.01, help="flag negative transfer when a delta is below -threshold"
    )
    p.add_argument("--chance", help="suite.json of the bundled suite: adds chance levels")
    p.add_argument("--affinity", help="affinity.json from `mta-moe affinity`: adds its heatmap and grouping")
    p.add_argument("--out", required=True, help="directory for report.md, report.json and the figures")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--max-input-length", type=positive_int, help="default: the first system's training run's, else 128")
    p.add_argument("--max-new-tokens", type=positive_int, help="default: the first system's training run's, else 32")
    p.add_argument(
        "--device",
        default="auto",
        help="where to generate and score: auto (a GPU when one is visible, else the CPU), cpu, cuda[:N]",
    )


@command(
    "compare",
    "single-task, shared and MTA runs on the same data and budget, then the report",
    "mta_moe.experiments.commands:compare_command",
)
def _compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the stage-1 DeepSpeed JSON with its mta section")
    p.add_argument("--stage2", help="the stage-2 config (init_from is set to this comparison's stage 1)")
    p.add_argument("--out", required=True, help="directory for every run and the report (out/report)")
    p.add_argument(
        "--single-task-budget",
        choices=("examples", "steps"),
        default="examples",
        help="single-task models see as many examples of their task as the mixture gives it "
        "(default), or train as many steps as the multi-task run",
    )
    p.add_argument("--no-single-task", action="store_true", help="skip the single-task baselines")
    p.add_argument(
        "--seeds",
        default="",
        metavar="S1,S2",
        help="extra seeds (train.seed and data.seed) for every multi-task system and variant: run-to-run spread",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="steps of every multi-task stage-1 run (default: twice the config's mta.train.steps, so "
        "each system can plateau; the report also scores each run at the config's budget)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=4,
        help="stop a multi-task stage-1 run after this many validations without a better validation "
        "macro (0: train all --steps); runs are scored at their best validation checkpoint",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="retrain a finished run under --out whose configuration differs (refused without it)",
    )
    p.add_argument(
        "--eval-every",
        type=positive_int,
        default=None,
        help="validate every this many steps (default: the config's mta.train.eval_every)",
    )
    p.add_argument(
        "--ablate-temperature", default="", metavar="T1,T2", help="extra stage-1 runs with these Softmax-T temperatures"
    )
    p.add_argument("--ablate-freeze", action="store_true", help="an extra stage-2 run with nothing frozen")
    p.add_argument(
        "--variant",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME[:2]", "OVERRIDES"),
        help="an extra MTA run: stage 1 (or stage 2 with NAME:2) with these overrides, e.g. "
        "--variant pcgrad '--train.gradient_projection pcgrad'",
    )
    p.add_argument(
        "--threshold", type=finite_float, default=0.01, help="flag negative transfer when a delta is below -threshold"
    )
    p.add_argument(
        "--launcher",
        default=None,
        help="how each run is started, e.g. 'deepspeed --num_gpus 4' (default: this python); the "
        "runs are `<launcher> -m mta_moe.cli train ...`",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="where the baselines and the report generate and score: auto (a GPU when one is visible, "
        "else the CPU), cpu, cuda[:N]",
    )
    p.epilog = "Further --key value pairs override both configs (e.g. --train.steps 300)."


@command(
    "affinity",
    "measure inter-task affinity on a probe run and write the adapter assignment it implies",
    "mta_moe.experiments.commands:affinity_command",
)
def _affinity(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a stage-1 DeepSpeed JSON: the model, data and batch size")
    p.add_argument("--out", required=True, help="directory for affinity.json, the heatmap and the config")
    p.add_argument("--model", help="measure at this trained export instead of training a probe")
    p.add_argument("--probe-steps", type=positive_int, default=None, help="steps of the fully shared probe run")
    p.add_argument("--every", type=positive_int, default=None, help="measure every this many probe steps")
    p.add_argument("--rows", type=positive_int, default=64, help="held-out probe rows per task")
    p.add_argument(
        "--horizon",
        type=positive_int,
        default=10,
        help="lookahead: optimizer steps on one task before every task's probe loss is read",
    )
    p.add_argument(
        "--threshold", type=finite_float, default=0.0, help="tasks whose affinity is below this never share an adapter"
    )
    p.add_argument("--max-groups", type=positive_int, default=None, help="at most this many groups (adapters)")
    p.epilog = "Further --key value pairs override the config (e.g. --train.lr 1e-3)."


@command(
    "export",
    "fold one task's adapters into a stock Hugging Face model (no mta_moe needed to serve it)",
    "mta_moe.merging.export:export_command",
)
def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="an MTA export directory (stage 1, gate_mode 'task')")
    p.add_argument("--out", required=True, help="the folder to write (with --all: one sub-folder per task)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--task", help="the task to export (models routed by task)")
    which.add_argument("--type", help="the task type to export (models routed by type)")
    which.add_argument("--all", action="store_true", help="every task (or task type) the model routes by")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the export's, or the run's tokenizer/)")


@command(
    "save-adapters",
    "the MTA weights alone (adapters, selector, stage-2 parts) for loading on the backbone",
    "mta_moe.modeling.adapter_files:save_adapters_command",
)
def _save_adapters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="an MTA export directory")
    p.add_argument(
        "--backbone",
        required=True,
        help="hub id or directory of the backbone the adapters go on (checked: it must hold the "
        "export's backbone weights)",
    )
    p.add_argument("--out", required=True, help="directory for mta_adapters.json and adapters.safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace what --out already holds (refused without it)")


@command(
    "init",
    "write a stage-1 and a stage-2 config for your own data files (tasks, adapters, budget from the rows)",
    "mta_moe.training.init_command:init_command",
)
def _init(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", nargs="+", required=True, metavar="FILE", help="training data (canonical format)")
    p.add_argument("--validation", nargs="+", metavar="FILE", help="validation data: scores while training")
    p.add_argument("--test", nargs="+", metavar="FILE", help="test data")
    p.add_argument("--out", required=True, help="directory for stage1.json, stage2.json and, later, the runs")
    p.add_argument(
        "--from",
        dest="from_stage1",
        metavar="STAGE1.json",
        help="the stage-1 config to start from (default: the shipped ds_configs/stage1.json)",
    )
    p.add_argument("--from-stage2", metavar="STAGE2.json", help="with --from: the stage-2 config to start from")
    p.add_argument("--overwrite", action="store_true", help="replace stage1.json / stage2.json already in --out")


@command(
    "config",
    "check a config (validate), print it resolved (show), or print the reference of every key: "
    "the JSON schema (schema) or the docs' key tables (docs)",
    "mta_moe.training.config_command:config_command",
)
def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=("validate", "show", "schema", "docs"),
        help="validate: check FILE; show: print FILE resolved; schema: the JSON schema of the mta section; "
        "docs: the markdown key tables",
    )
    p.add_argument("file", nargs="?", help="a DeepSpeed JSON with an mta section (validate, show)")
    p.add_argument("--write", metavar="DOCS_DIR", help="docs: rewrite the generated tables in DOCS_DIR/*.md")
    p.epilog = "Further --key value pairs override the file, as with train (--train.steps 500)."


@command(
    "check-data", "check data files in the canonical format before training", "mta_moe.data.__main__:check_command"
)
def _check(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+")
    p.add_argument("--task-types", nargs="+", default=None, help="configured task types (mta.task_types)")
    p.add_argument("--skip-bad-rows", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mta-moe",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:11]),
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"mta-moe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, configure, _) in _COMMANDS.items():
        configure(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def _without_local_rank(argv: Sequence[str]) -> list[str]:
    """The deepspeed launcher passes ``--local_rank=N`` (before the script's own arguments); ranks read
    LOCAL_RANK from the environment instead, so the flag is dropped wherever it appears."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            skip = True
            continue
        if arg.startswith(("--local_rank=", "--local-rank=")):
            continue
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The ``mta-moe`` command.

    Args:
        argv: the arguments after the program name; default: ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, non-zero otherwise (2 for bad input, reported as one ``error:`` line).
    """
    argv = _without_local_rank(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    _, _, handler = _COMMANDS[args.command]
    if extra and args.command not in ("train", "compare", "affinity", "config"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    module_name, function = handler.split(":")
    import importlib

    from .logs import configure_logging

    try:
        configure_logging()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return int(getattr(importlib.import_module(module_name), function)(args, extra) or 0)


if __name__ == "__main__":
    sys.exit(main())
