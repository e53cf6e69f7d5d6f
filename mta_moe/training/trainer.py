"""One training stage under a DeepSpeed engine, top to bottom: :func:`train` runs the loop over the
:class:`~.run.Run` that :func:`.setup.build_run` built: sample a batch, one optimizer step (:func:`train_step`),
log, validate, save; the checkpoints (resumable, sampler and RNG included) and exports are in :mod:`.run`."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..collectives import all_reduce
from ..data import rank_slice
from ..evaluation.generation import causal_prompt, predict_texts
from ..logs import get_logger
from ..metrics import score_predictions
from .checkpoints import latest_tag
from .run import BEST, CHECKPOINTS, EXPORT, Run, apply_unfreeze, export, info, save_checkpoint
from .stop_signals import StopRequested, StopSignals
from .validation_loss import task_losses

log = get_logger(__name__)


@dataclass
class StepTensors:
    """One optimizer step's statistics, on the device until a logging step reads them."""

    task_loss: torch.Tensor  # [T] float64: summed per-sequence losses per task (this rank)
    task_count: torch.Tensor  # [T] float64: sequences per task (this rank)
    totals: torch.Tensor  # [3] float64: loss sum, aux sum, tokens (this rank, over the micro-batches)
    grad_norm: torch.Tensor | float | None
    accum: int

    @property
    def loss(self) -> torch.Tensor:
        """This rank's loss, averaged over its micro-batches."""
        return self.totals[0] / self.accum

    @property
    def tokens(self) -> torch.Tensor:
        return self.totals[2]


class DivergedError(RuntimeError):
    """The loss or the gradient norm stopped being finite (``mta-moe train`` exits with code 3)."""


def train(run: Run) -> dict[str, float]:
    """Train ``run`` to ``mta.train.steps`` (or ``stop_at_step``, or early stopping) and export it; returns the last
    validation scores. Stopped early (``stop_at_step``): a checkpoint to ``--resume`` from, no export."""
    t, engine, state = run.cfg.train, run.engine, run.state
    micro, accum = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
    bar = tqdm(total=t.steps, initial=state.step, disable=run.rank != 0, desc=f"stage {t.stage}")
    scores: dict[str, float] = {}
    end = t.steps if t.stop_at_step is None else min(t.steps, t.stop_at_step)
    signals = StopSignals().install()
    try:
        _loop(run, bar, end, micro, accum, scores, signals)
    finally:  # also on an error: the bar's last line comes before the error's
        bar.close()
        signals.restore()
    if state.step < t.steps and not patience_spent(run):  # stopped early: resume from the checkpoint
        if state.step % t.save_every:
            save_checkpoint(run)
        info(f"stopped at step {state.step} of {t.steps}; continue with --resume")
        run.logger.close()
        return scores
    export(run, run.out / EXPORT, scores)
    run.logger.close()
    return scores


def _loop(
    run: Run, bar: tqdm, end: int, micro: int, accum: int, scores: dict[str, float], signals: StopSignals
) -> None:
    """Steps until ``end``: sample, train, log, validate (``scores`` holds the last validation), save."""
    t, state = run.cfg.train, run.state
    window_seconds, window_tokens = 0.0, None  # training time and tokens since the last train record
    while state.step < end:
        started = time.perf_counter()
        apply_unfreeze(run)
        picks = run.sampler.next_batch(micro * run.world * accum, state.step)
        step = train_step(run, picks, micro, accum)
        if step is None:  # a non-finite loss, skipped (mta.train.skip_nonfinite_batches)
            _skipped_batch(run, picks)
            continue
        state.step += 1
        run.health.observe(state.step, step.loss, step.grad_norm, sorted({task for task, _ in picks}))
        window_tokens = step.tokens if window_tokens is None else window_tokens + step.tokens
        bar.update(1)
        if run.balance.method is not None:
            run.logger.log("task_weights", state.step, run.balance.current())
        log_now = state.step % t.log_every == 0 or state.step == t.steps
        eval_now = run.val_set is not None and (state.step % t.eval_every == 0 or state.step == t.steps)
        save_now = state.step % t.save_every == 0 or state.step == t.steps
        if log_now or eval_now or save_now:  # the one read-back of the device: before anything is kept
            _check_finite(run)
        if log_now:
            stats = _step_stats(run, step, window_tokens)  # waits for the device: the window's time is complete
            window_seconds += time.perf_counter() - started
            stats["tokens_per_s"] = stats.pop("tokens") / window_seconds
            window_seconds, window_tokens = 0.0, None
            run.logger.log("train", state.step, stats)
            _log_routing(run)
            bar.set_postfix(loss=f"{stats['loss']:.3f}")
        else:
            window_seconds += time.perf_counter() - started
        if eval_now:
            scores.clear()
            scores.update(validate(run))
        if state.step in t.export_steps:
            export(run, run.out / f"{EXPORT}_step{state.step}", scores)
        if eval_now and patience_spent(run):
            info(
                f"step {state.step}: no better validation macro in {state.evals_since_best} validations "
                f"(best {state.best:.3f}); stopping early (mta.train.early_stopping)"
            )
            run.logger.log("early_stop", state.step, {"best": state.best, "evals_since_best": state.evals_since_best})
            save_now = True
        if save_now:
            save_checkpoint(run)
        if eval_now and patience_spent(run):
            break
        signum = signals.agreed(run.world)
        if signum is not None:  # SIGTERM / SIGINT: this step's checkpoint, then stop
            if not save_now:
                save_checkpoint(run)
            run.logger.log("stopped", state.step, {"signal": signum})
            run.logger.close()
            raise StopRequested(signum, state.step, f"step{state.step}")
    _check_finite(run)  # a run stopped early (stop_at_step) keeps nothing non-finite either


def train_step(run: Run, picks: list[tuple[str, int]], micro: int, accum: int) -> StepTensors | None:
    """One optimizer step over ``accum`` micro-batches; its statistics stay on the device (see
    :func:`_step_stats`). None: a non-finite loss skipped before backward (``skip_nonfinite_batches``)."""
    engine, names = run.engine, run.data.registry.names
    device = engine.device
    task_loss = torch.zeros(len(names), dtype=torch.float64, device=device)
    task_count = torch.zeros(len(names), dtype=torch.float64, device=device)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, aux sum, tokens
    share = micro * run.world
    normalizer = token_normalizer(run, accum)
    for a in range(accum):
        mine = rank_slice(picks[a * share : (a + 1) * share], run.rank, run.world)
        batch = run.collate([run.train_rows[run.task_rows[task][i]] for task, i in mine])
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        result = run.objective(engine, run.model, batch, run.state.step, normalizer)
        if run.cfg.train.skip_nonfinite_batches and not _finite_on_every_rank(run, result.loss):
            return None  # before backward: nothing of this batch reaches the weights or the optimizer
        engine.backward(result.backward)
        engine.step()
        task_ids = batch["task_ids"]
        task_loss.index_add_(0, task_ids, result.per_sample.detach().double())
        task_count.index_add_(0, task_ids, torch.ones_like(task_ids, dtype=torch.float64))
        totals += torch.stack([result.loss.double(), result.aux.double(), batch["attention_mask"].sum().double()])
    return StepTensors(task_loss, task_count, totals, engine.get_global_grad_norm(), accum)


def token_normalizer(run: Run, accum: int) -> float | None:
    """With length-grouped batches and the ``token`` reduction: the window's mean scored tokens per micro-batch,
    the divisor of every micro-batch's loss in the window (None: each batch's own count)."""
    per_batch = run.sampler.tokens_per_batch
    if per_batch is None or run.cfg.train.loss_reduction != "token":
        return None
    return max(per_batch / (accum * run.world), 1.0)


def _step_stats(run: Run, step: StepTensors, window_tokens: torch.Tensor) -> dict[str, Any]:
    """The logged record of one step, with ``tokens``: ``window_tokens`` summed over ranks; read back to the host
    here only (the logging steps)."""
    names = run.data.registry.names
    packed = torch.cat([step.task_loss, step.task_count, step.totals, window_tokens.reshape(1)])
    if run.world > 1:
        all_reduce(packed)
    packed = packed.cpu()
    n, ranks = len(names), step.accum * run.world
    task_loss, task_count, totals = packed[:n], packed[n : 2 * n], packed[2 * n : 2 * n + 3]
    norm = step.grad_norm
    stats = {
        "loss": totals[0].item() / ranks,
        "aux_loss": totals[1].item() / ranks,
        "lr": run.scheduler.get_last_lr()[0],
        "grad_norm": None if norm is None else float(norm),
        "task_loss": {t: task_loss[i].item() / task_count[i].item() for i, t in enumerate(names) if task_count[i] > 0},
        "tokens": packed[-1].item(),
    }
    conflicts = run.objective.pop_conflicts()
    if conflicts is not None:
        stats["pcgrad_conflicts"] = conflicts
    return stats


def _check_finite(run: Run) -> None:
    """Stop (:class:`DivergedError`) if any step since the start had a non-finite loss or gradient norm."""
    bad = run.health.first_bad(run.world)
    if bad is not None:
        step, loss, norm, tasks = bad
        _diverged(run, {"loss": loss, "grad_norm": norm}, tasks, step=step)


def _finite_on_every_rank(run: Run, loss: torch.Tensor) -> bool:
    bad = torch.tensor([0.0 if math.isfinite(float(loss)) else 1.0])
    if run.world > 1:
        all_reduce(bad, op=dist.ReduceOp.MAX)
    return bad.item() == 0.0


def _skipped_batch(run: Run, picks: list[tuple[str, int]]) -> None:
    """Count and log a skipped batch; one more than ``skip_nonfinite_batches`` stops the run as diverged."""
    state = run.state
    state.skipped += 1
    tasks = sorted({task for task, _ in picks})
    allowed = run.cfg.train.skip_nonfinite_batches
    run.logger.log("skipped_batch", state.step + 1, {"tasks": tasks, "skipped": state.skipped, "allowed": allowed})
    if state.skipped > allowed:
        _diverged(
            run,
            {"loss": float("nan"), "grad_norm": None},
            tasks,
            f"{state.skipped} batches with a non-finite loss, more than "
            f"mta.train.skip_nonfinite_batches ({allowed}) allows",
        )
    log.warning(
        f"step {state.step + 1}: non-finite loss on a batch of tasks {tasks}; skipped it "
        f"({state.skipped} of {allowed} allowed)"
    )


def _diverged(run: Run, stats: dict[str, Any], tasks: list[str], why: str = "", step: int | None = None) -> None:
    """The first step whose loss or gradient norm is not finite: stop before anything is saved from it."""
    step = run.state.step + 1 if step is None else step
    run.logger.log("diverged", step, {"loss": stats["loss"], "grad_norm": stats["grad_norm"]})
    run.logger.close()
    last = latest_tag(run.out / CHECKPOINTS) or "none"
    raise DivergedError(
        f"step {step}: {why + '; ' if why else ''}loss {stats['loss']}, gradient norm "
        f"{stats['grad_norm']} on a "
        f"batch of tasks {tasks}; stopped before saving anything "
        f"from it (last checkpoint: {last}; export/ and best/ hold only earlier, finite models). "
        "Lower mta.train.lr or raise gradient_clipping, then --resume or start again"
    )


def _log_routing(run: Run) -> None:
    """Routing since the last record, summed over ranks: per layer, sequences per task type and adapter, mean gate
    weights (and stage-2 mixing weights); then the counters restart."""
    layers = {}
    for name, layer in run.model.mta_layers.items():
        layers[name] = layer.get_routing_stats(all_reduce=run.world > 1).as_dict()
        layer.reset_routing_stats()
    run.logger.log("routing", run.state.step, {"layers": layers})
    run.monitor.add_routing(layers)


def _warn(run: Run, warnings: list[dict[str, Any]]) -> None:
    for warning in warnings:
        run.logger.log("warning", run.state.step, warning)
        log.warning(f"step {run.state.step}: {warning['message']}")


def validate(run: Run) -> dict[str, float]:
    """Greedy generations on the validation split scored per task; ``scores`` holds each task's primary metric and
    ``macro`` (what selects the best export); ``metrics`` all of them."""
    t, state, val_set = run.cfg.train, run.state, run.val_set
    prompt_only = causal_prompt if run.mode == "causal" else None
    predictions = predict_texts(
        run.model,
        val_set,
        run.tokenizer,
        run.collate,
        t.eval_batch_size,
        t.max_new_tokens,
        lockstep=run.cfg.mta.ep_size > 1,
        device=run.engine.device,
        prompt_only=prompt_only,
    )
    result = score_predictions(
        list(val_set["task"]),
        list(val_set["target"]),
        predictions,
        {k: v["kind"] for k, v in run.profiles.items()},
        run.data.registry.type_of,
        {k: v["labels"] for k, v in run.profiles.items()},
    )
    scores = {task: m["primary"] for task, m in result["tasks"].items()}
    scores["macro"] = result["macro"]
    run.logger.log(
        "validation", state.step, {"scores": scores, "metrics": result["tasks"], "by_type": result["by_type"]}
    )
    if run.rank == 0:  # what each validation example generated, for inspection and comparison
        folder = run.out / "predictions"
        folder.mkdir(exist_ok=True)
        rows = zip(val_set["task"], val_set["target"], predictions)
        (folder / f"step{state.step}.jsonl").write_text(
            "".join(
                json.dumps({"task": task, "target": target, "prediction": text}) + "\n" for task, target, text in rows
            )
        )
    info(f"step {state.step} validation: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    _warn(run, run.monitor.check_validation(scores) + run.monitor.check_routing())
    run.balance.after_validation(scores, t.baseline_scores)
    _update_sampling(run, scores)
    min_delta = (t.early_stopping or {}).get("min_delta", 0.0)
    state.evals_since_best = 0 if scores["macro"] > state.best + min_delta else state.evals_since_best + 1
    if scores["macro"] > state.best:
        state.best = scores["macro"]
        export(run, run.out / BEST, scores)
        run.logger.log("best", state.step, {"macro": state.best})
    return scores


def patience_spent(run: Run) -> bool:
    """``mta.train.early_stopping``: this many validations in a row without a better macro."""
    spec = run.cfg.train.early_stopping
    return spec is not None and run.state.evals_since_best >= spec["patience"]


def _update_sampling(run: Run, scores: dict[str, float]) -> None:
    """``sampling.strategy: dynamic``: re-weight the mixture from this validation (task losses, or the scores with
    ``dynamic_signal: metric``) and log the new rates."""
    sampling = run.cfg.data.sampling
    if sampling.strategy != "dynamic":
        return
    if sampling.dynamic_signal == "loss":
        signal = task_losses(
            run.model,
            run.val_rows,
            run.data.registry.names,
            run.collate,
            run.cfg.train.eval_batch_size,
            run.engine.device,
            run.mode,
        )
    else:
        signal = {task: scores[task] for task in run.sampler.tasks}
    rates = run.sampler.update_dynamic({task: signal[task] for task in run.sampler.tasks})
    run.logger.log("sampling", run.state.step, {"signal": signal, "rates": rates})
    info(f"step {run.state.step} mixing rates: " + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
