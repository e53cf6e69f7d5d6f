"""Mixture sampling across tasks: proportional, temperature, uniform and dynamic; caps; resumable state.

Each global batch is drawn as ``batch_size`` (task, example) pairs: the task of every sample from the
mixing rates, the example from that task's own shuffled order (a fresh permutation each epoch, keyed by
seed, task and epoch). The whole state is a small JSON-able dict, so a resumed run draws the same batches.
Data-parallel ranks all draw the same global batch and each takes its slice.
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, Any, Literal, Mapping, Sequence

import numpy as np
from pydantic import Field

from ..typed_config import build_section, check_known_tasks, check_section, setting, typed_section
from .curriculum import Curriculum

STRATEGIES = ("proportional", "temperature", "uniform", "dynamic")
DYNAMIC_SIGNALS = ("loss", "metric")


@typed_section("mta.data.sampling")
class SamplingConfig:
    """``strategy``: proportional (rate ∝ min(n, cap)), temperature (∝ min(n, cap)^(1/temperature)),
    uniform, or dynamic (the temperature rates re-weighted from validation: tasks whose loss has fallen
    least, or whose metric is lowest, get more: rate ∝ base · s^alpha with s = loss / first loss or
    1 − metric, and at least ``min_rate`` of the uniform rate)."""

    strategy: Literal[STRATEGIES] = setting(  # type: ignore[valid-type]
        "temperature",
        "how the mixing rates follow the task sizes: `proportional`, `temperature`, `uniform` or "
        "`dynamic` (*Task mixing*)",
    )
    temperature: float = setting(2.0, "the temperature strategy's T (rate ∝ size^(1/T))", gt=0)
    caps: dict[str, Annotated[int, Field(ge=1)]] = setting(
        {}, "`{task: cap}`: a cap on the task's size for its rate (T5's K)", must="an object {task: cap}"
    )
    default_cap: int | None = setting(None, "the cap of tasks without one in `caps`", ge=1)
    dynamic_signal: Literal[DYNAMIC_SIGNALS] = setting(  # type: ignore[valid-type]
        "loss", "what the dynamic strategy re-weights by: validation `loss` or `metric`"
    )
    dynamic_alpha: float = setting(1.0, "the exponent of the dynamic re-weighting", gt=0)
    min_rate: float = setting(0.1, "the dynamic rates' floor, a fraction of the uniform rate", ge=0, le=1)

    @classmethod
    def from_dict(cls, raw: Any, key: str = "mta.data.sampling") -> "SamplingConfig":
        return build_section(cls, raw, key)

    def validate(self) -> None:
        """Check the fields again (after some were set by hand)."""
        check_section(self)


class MixtureSampler:
    """Draws mixed-task batches of (task name, example index); see the module docstring."""

    def __init__(
        self,
        task_sizes: Mapping[str, int],
        config: SamplingConfig | None = None,
        seed: int = 0,
        curriculum: Curriculum | None = None,
    ) -> None:
        self.tasks = list(task_sizes)
        if not self.tasks:
            raise ValueError("sampler: no tasks")
        self.sizes = [int(task_sizes[t]) for t in self.tasks]
        if min(self.sizes) < 1:
            raise ValueError(f"sampler: every task needs examples, got {dict(task_sizes)}")
        self.config = config or SamplingConfig()
        check_known_tasks(self.config.caps, self.tasks, "mta.data.sampling.caps")
        self.seed = seed
        self.curriculum = curriculum
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._position = [0] * len(self.tasks)
        self._epoch = [0] * len(self.tasks)
        self._orders: dict[int, tuple[int, np.ndarray]] = {}
        self._signal_start: list[float | None] = [None] * len(self.tasks)
        self._dynamic: list[float] | None = None
        # the token-loss divisor shared by the current batches (length grouping sets one); None: each its own
        self.tokens_per_batch: float | None = None

    # ------------------------------------------------------------------ rates
    def base_rates(self) -> np.ndarray:
        """Mixing rates before curriculum and dynamic re-weighting."""
        cfg = self.config
        capped = np.array(
            [min(n, cfg.caps.get(t, cfg.default_cap or n)) for t, n in zip(self.tasks, self.sizes)], dtype=np.float64
        )
        if cfg.strategy == "uniform":
            rates = np.ones_like(capped)
        elif cfg.strategy == "proportional":
            rates = capped
        else:
            rates = capped ** (1.0 / cfg.temperature)
        return rates / rates.sum()

    def rates(self, step: int = 0) -> dict[str, float]:
        """The rates used at ``step`` (curriculum and dynamic weights applied), summing to 1."""
        rates = self.base_rates()
        if self._dynamic is not None:
            rates = rates * np.array(self._dynamic)
        if self.curriculum is not None:
            rates = rates * np.array(self.curriculum.multipliers(step, self.tasks))
        if rates.sum() <= 0:
            raise ValueError(f"sampler: no task has a positive rate at step {step}")
        return dict(zip(self.tasks, (rates / rates.sum()).tolist()))

    def update_dynamic(self, signal: Mapping[str, float]) -> dict[str, float]:
        """Re-weight from validation: ``signal`` is a loss or a metric in [0, 1] per task."""
        cfg = self.config
        if cfg.strategy != "dynamic":
            raise ValueError(f"sampler: update_dynamic needs strategy 'dynamic', not {cfg.strategy!r}")
        missing = [t for t in self.tasks if t not in signal]
        if missing:
            raise ValueError(f"sampler: dynamic signal lacks tasks {missing}")
        scores = []
        for i, task in enumerate(self.tasks):
            value = float(signal[task])
            if not math.isfinite(value):
                raise ValueError(f"sampler: dynamic signal for {task} is not finite ({value})")
            if cfg.dynamic_signal == "loss":
                if self._signal_start[i] is None:
                    self._signal_start[i] = max(value, 1e-12)
                scores.append(max(value, 0.0) / self._signal_start[i])
            else:
                scores.append(max(1.0 - value, 0.0))
        weights = np.array(scores) ** cfg.dynamic_alpha
        base = self.base_rates()
        rates = base * weights
        rates = rates / rates.sum() if rates.sum() > 0 else base
        floor = cfg.min_rate / len(self.tasks)
        rates = np.maximum(rates, floor)
        self._dynamic = (rates / rates.sum() / base).tolist()
        return self.rates()

    # ------------------------------------------------------------------ drawing
    def next_batch(self, batch_size: int, step: int = 0) -> list[tuple[str, int]]:
        """``batch_size`` (task, index within the task) pairs for training step ``step``."""
        rates = self.rates(step)
        picks = self._rng.choice(len(self.tasks), size=batch_size, p=[rates[t] for t in self.tasks])
        return [(self.tasks[i], self._next_index(int(i))) for i in picks]

    def _next_index(self, task: int) -> int:
        if self._position[task] >= self.sizes[task]:
            self._position[task] = 0
            self._epoch[task] += 1
        order = self._order(task)
        index = int(order[self._position[task]])
        self._position[task] += 1
        return index

    def _order(self, task: int) -> np.ndarray:
        cached = self._orders.get(task)
        if cached is None or cached[0] != self._epoch[task]:
            rng = np.random.Generator(np.random.PCG64([self.seed, task, self._epoch[task]]))
            cached = (self._epoch[task], rng.permutation(self.sizes[task]))
            self._orders[task] = cached
        return cached[1]

    def epochs(self) -> dict[str, float]:
        """Passes made over each task's data so far."""
        return {t: e + p / n for t, e, p, n in zip(self.tasks, self._epoch, self._position, self.sizes)}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks),
            "sizes": list(self.sizes),
            "seed": self.seed,
            "rng": copy.deepcopy(self._rng.bit_generator.state),
            "position": list(self._position),
            "epoch": list(self._epoch),
            "signal_start": list(self._signal_start),
            "dynamic": self._dynamic,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("length_window"):
            raise ValueError(
                f"sampler state was saved with mta.data.group_by_length = {state['length_window']}; "
                f"this run has 0: resume with the setting the run was started with"
            )
        if list(state["tasks"]) != self.tasks or list(state["sizes"]) != self.sizes:
            raise ValueError(
                f"sampler state is for tasks {state['tasks']} with sizes {state['sizes']}; "
                f"this run has {self.tasks} with {self.sizes}"
            )
        self.seed = int(state["seed"])
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
        self._position = list(state["position"])
        self._epoch = list(state["epoch"])
        self._signal_start = list(state["signal_start"])
        self._dynamic = None if state["dynamic"] is None else list(state["dynamic"])
        self._orders.clear()


def rank_slice(batch: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """This rank's contiguous share of a global batch (its length must divide evenly)."""
    if len(batch) % world_size:
        raise ValueError(f"global batch of {len(batch)} does not split over {world_size} ranks")
    share = len(batch) // world_size
    return list(batch[rank * share : (rank + 1) * share])
