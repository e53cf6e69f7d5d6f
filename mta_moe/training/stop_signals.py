"""SIGTERM / SIGINT end a run at the next step boundary with a checkpoint, instead of losing up to ``save_every``
steps (a scheduler's time limit, a preemption, Ctrl-C). Every rank takes part in the decision, so all of them
save the same step and exit together."""

from __future__ import annotations

import signal
from types import FrameType

import torch
import torch.distributed as dist

from ..collectives import all_reduce

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(RuntimeError):
    """A run was stopped by a signal after saving its checkpoint; ``mta-moe train`` exits with 128 + the signal."""

    def __init__(self, signum: int, step: int, tag: str) -> None:
        self.signum = signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint {tag} written; continue with --resume"
        )


class StopSignals:
    """Records SIGTERM / SIGINT while installed (the previous handlers come back on :meth:`restore`)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {}

    def install(self) -> "StopSignals":
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def agreed(self, world: int) -> int | None:
        """The signal any rank received (the largest number), or None; with several ranks, one all-reduce."""
        if world == 1:
            return self.received
        flag = torch.tensor([float(self.received or 0)])
        all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None
