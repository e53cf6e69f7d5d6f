"""Train one MTA stage: ``deepspeed launchers/train.py --deepspeed ds_configs/stage1.json [--key value ...]``.

Also runs under ``torchrun --nproc_per_node N`` and as plain ``python``. Overrides are dotted keys of
the config (``--mta.k 2``, ``--train.steps 500``, ``--train_micro_batch_size_per_gpu 4``); ``--resume``
continues from the latest checkpoint in the run's output directory.
"""
from __future__ import annotations

import argparse
import sys

from mta_moe.config import ConfigError
from mta_moe.data import DataError
from mta_moe.training.run_config import load_run_config
from mta_moe.training.trainer import Trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deepspeed", "--deepspeed_config", dest="config", required=True,
                        help="DeepSpeed JSON with an \"mta\" section")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    args, overrides = parser.parse_known_args(argv)
    try:
        cfg = load_run_config(args.config, overrides)
        trainer = Trainer(cfg, resume=args.resume)
        scores = trainer.run()
    except (ConfigError, DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if scores and trainer.rank == 0:
        print("final validation: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
