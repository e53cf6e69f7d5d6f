"""Length-grouped batches: the mixture's draws for a window of steps, re-cut so that each batch holds examples of
similar length (less padding, the same examples).

The batches of ``window`` consecutive steps are drawn exactly as :class:`MixtureSampler` draws them (same rates,
curriculum and per-step arguments), pooled, ordered by length (stable: ties keep the draw order), cut back into
``window`` batches of the same size and handed out in an order shuffled by ``(seed, first step)``. A run of any
number of whole windows therefore trains on exactly the examples the ungrouped mixture draws, and the last window
is shortened to end with the run, so the run as a whole does too (``experiments.budget`` counts stay exact). What
changes is which examples share a batch: a batch becomes more uniform in length, and so in task where tasks differ
in length. With ``dynamic`` sampling, rates updated by a validation take effect from the next window.

``tokens_per_batch`` is the window's mean, per batch, of the last element of the length key (the target tokens
the loss scores). A loss averaged over each batch's own tokens would give a token of a short-target batch (say,
a batch of class labels) many times the weight of a token of a long-target batch; the trainer divides every
batch of the window by this mean instead, which keeps each token's weight what it is in mixed batches.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from .sampling import MixtureSampler

Pick = tuple[str, int]


class LengthGroupedSampler:
    """Wraps a :class:`MixtureSampler`; ``length(task, index)`` gives the sort key of an example, a tuple whose
    last element is its scored target tokens (the trainer's: input tokens, scored target tokens);
    ``total_steps`` (optional) shortens the last window to the run's end."""

    def __init__(
        self,
        sampler: MixtureSampler,
        length: Callable[[str, int], tuple[int, ...]],
        window: int,
        total_steps: int | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"length grouping: window must be >= 1 steps, got {window}")
        self.sampler, self.length, self.window, self.total_steps = sampler, length, window, total_steps
        self._pending: list[list[Pick]] = []
        self.tokens_per_batch: float | None = None

    @property
    def tasks(self) -> list[str]:
        return self.sampler.tasks

    def rates(self, step: int = 0) -> dict[str, float]:
        return self.sampler.rates(step)

    def update_dynamic(self, signal: Mapping[str, float]) -> dict[str, float]:
        return self.sampler.update_dynamic(signal)

    def epochs(self) -> dict[str, float]:
        return self.sampler.epochs()

    def next_batch(self, batch_size: int, step: int = 0) -> list[Pick]:
        """The next batch of the current window; a new window of draws starts at ``step`` when it is used up."""
        if not self._pending:
            self._pending = self._draw_window(batch_size, step)
        if len(self._pending[0]) != batch_size:
            raise ValueError(
                f"length grouping: the window was drawn with batches of {len(self._pending[0])}, "
                f"now {batch_size} are asked for"
            )
        return self._pending.pop(0)

    def _draw_window(self, batch_size: int, step: int) -> list[list[Pick]]:
        """The window's batches in hand-out order; sets ``tokens_per_batch`` from the same length keys."""
        steps = self.window if self.total_steps is None else max(1, min(self.window, self.total_steps - step))
        drawn = [pick for j in range(steps) for pick in self.sampler.next_batch(batch_size, step + j)]
        keyed = [(self.length(*pick), pick) for pick in drawn]
        keyed.sort(key=lambda item: item[0])
        self.tokens_per_batch = sum(key[-1] for key, _ in keyed) / steps
        pooled = [pick for _, pick in keyed]
        batches = [pooled[i * batch_size : (i + 1) * batch_size] for i in range(steps)]
        order = np.random.Generator(np.random.PCG64([self.sampler.seed, step])).permutation(steps)
        return [batches[i] for i in order]

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The mixture's state plus the window's batches not yet handed out (JSON-able)."""
        return {
            **self.sampler.state_dict(),
            "length_window": self.window,
            "tokens_per_batch": self.tokens_per_batch,
            "pending": [[[task, index] for task, index in batch] for batch in self._pending],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("length_window") != self.window:
            saved = state.get("length_window")
            raise ValueError(
                f"sampler state was saved with mta.data.group_by_length = {saved or 0}; this run has "
                f"{self.window}: resume with the setting the run was started with"
            )
        own = ("length_window", "pending", "tokens_per_batch")
        self.sampler.load_state_dict({k: v for k, v in state.items() if k not in own})
        self.tokens_per_batch = state["tokens_per_batch"]
        self._pending = [[(str(task), int(index)) for task, index in batch] for batch in state["pending"]]
