"""Equal-budget arithmetic for comparisons: how many examples of each task a multi-task run draws, and how many
steps a single-task run needs to see as many."""

from __future__ import annotations

import math
from collections import Counter
from typing import Mapping

from ..data import Curriculum, MixtureSampler


def examples_per_task(run_cfg, task_sizes: Mapping[str, int]) -> dict[str, int]:
    """The exact number of training examples of each task the run draws: its sampler (rates, curriculum and
    seed) replayed for all of its steps, at one data-parallel rank (with W ranks both the multi-task run and
    the single-task runs draw W times as many per step, so the equal-examples steps are the same). Length-grouped
    batches (``mta.data.group_by_length``) re-cut the same draws, their last window ending with the run: the
    counts are theirs too.
    ``task_sizes`` in the trainer's task order (sorted names, or ``mta.tasks`` of a model that routes by task)."""
    d, t = run_cfg.data, run_cfg.train
    tasks = list(task_sizes)
    curriculum = Curriculum.from_list(d.curriculum, tasks) if d.curriculum else None
    sampler = MixtureSampler({name: task_sizes[name] for name in tasks}, d.sampling, d.seed, curriculum)
    per_step = examples_per_step(run_cfg)
    counts: Counter[str] = Counter()
    for step in range(t.steps):
        counts.update(task for task, _ in sampler.next_batch(per_step, step))
    return {name: counts.get(name, 0) for name in tasks}


def examples_per_step(run_cfg) -> int:
    """Examples one optimizer step draws at one rank: micro batch × gradient accumulation."""
    ds = run_cfg.ds
    return int(ds["train_micro_batch_size_per_gpu"]) * int(ds.get("gradient_accumulation_steps", 1))


def single_task_steps(run_cfg, examples: Mapping[str, int], budget: str) -> dict[str, int]:
    """Steps of each task's single-task run: ``examples`` — as many of its examples as the mixture drew
    (rounded up to whole steps); ``steps`` — as many steps as the multi-task run."""
    if budget == "steps":
        return {task: run_cfg.train.steps for task in examples}
    per_step = examples_per_step(run_cfg)
    return {task: max(1, math.ceil(count / per_step)) for task, count in examples.items()}
