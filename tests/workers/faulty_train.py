"""``mta-moe train`` with one fault injected (tests/test_faults.py), chosen by MTA_TEST_FAULT:

* ``kill_in_commit:TAG`` — rank 0 kills the launcher and every rank after DeepSpeed wrote every file of
  checkpoint TAG, before its manifest and ``latest`` (a kill -9 inside a checkpoint write);
* ``nan_loss:N,M`` — the N-th, M-th, ... training micro-batch (1-based, counted on every rank) gets a NaN loss;
* ``die_rank:R:S`` — rank R kills itself (SIGKILL) when it starts step S;
* ``stall_rank:R:S`` — rank R stops answering (sleeps) when it starts step S.

Run as ``python faulty_train.py train --deepspeed CFG`` or under torchrun; everything else is the real trainer.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from distributed import kill_tree  # noqa: E402  (tests/distributed.py)

from mta_moe import cli
from mta_moe.training import objective as objective_module
from mta_moe.training import run as run_module
from mta_moe.training import trainer as trainer_module


def _inject(fault: str) -> None:
    kind, _, arg = fault.partition(":")
    if kind == "kill_in_commit":
        real_commit = run_module.commit

        def commit(checkpoints, tag, step, run_id):
            if tag == arg:  # the launcher and every rank, as a lost node would
                kill_tree(os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") else os.getpid())
            real_commit(checkpoints, tag, step, run_id)

        run_module.commit = commit
    elif kind == "nan_loss":
        poisoned, calls = {int(n) for n in arg.split(",")}, [0]
        real_call = objective_module.Objective.__call__

        def call(self, engine, model, batch, step, token_normalizer=None):
            result = real_call(self, engine, model, batch, step, token_normalizer)
            calls[0] += 1
            if calls[0] in poisoned:
                nan = float("nan")
                return dataclasses.replace(result, backward=result.backward * nan, loss=nan)
            return result

        objective_module.Objective.__call__ = call
    elif kind in ("die_rank", "stall_rank"):
        rank, step = (int(x) for x in arg.split(":"))
        real_step = trainer_module.train_step

        def train_step(run, picks, micro, accum):
            if run.rank == rank and run.state.step + 1 == step:
                if kind == "die_rank":
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(3600)
            return real_step(run, picks, micro, accum)

        trainer_module.train_step = train_step
    elif fault:
        raise SystemExit(f"unknown MTA_TEST_FAULT {fault!r}")


if __name__ == "__main__":
    _inject(os.environ.get("MTA_TEST_FAULT", ""))
    sys.exit(cli.main(sys.argv[1:]))
