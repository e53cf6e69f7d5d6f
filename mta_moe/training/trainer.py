"""One training stage under a DeepSpeed engine: the loop, validation, checkpoints (resumable, sampler and RNG
included) and the consolidated export; what it runs is built by :class:`.setup.RunSetup`."""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..collectives import all_reduce
from ..config import ConfigError
from ..data import rank_slice
from ..evaluation.generation import causal_prompt, generate_predictions
from ..logs import get_logger
from ..metrics import score_predictions
from ..modeling.persistence import gathered_state
from .checkpoints import (
    CheckpointError,
    check_free_space,
    check_output_dir,
    commit,
    latest_tag,
    new_run_id,
    read_run_id,
    verify,
)
from .distributed import barrier, init_process_group
from .exports import card_source, write_export
from .logger import RunLogger
from .resume_check import check_resume, record_data
from .run_config import RunConfig
from .setup import EXPORT, RunSetup
from .stop_signals import StopRequested, StopSignals
from .validation_loss import task_losses

CHECKPOINTS = "checkpoints"
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

BEST = "best"


class Trainer(RunSetup):
    """``Trainer(cfg).run()`` trains one stage as configured and returns the final validation scores."""

    def __init__(self, cfg: RunConfig, resume: bool = False, trust_checkpoint: bool = False,
                 overwrite: bool = False, resume_with_changes: tuple[str, ...] = ()) -> None:
        """Everything before the first step; a failure here leaves no run record (run_config.json, metrics,
        run_id) behind. ``resume``: the checkpoint is checked first (see :mod:`.checkpoints`); the output
        directory is locked for the run's life and another run in it is refused unless ``overwrite``
        (:mod:`.run_dir`); :meth:`release_output_dir` unlocks it. A resumed run must have the settings and data
        it started with, except ``resume_with_changes`` (:mod:`.resume_check`)."""
        self.cfg, self.resume = cfg, resume
        self.rank, self.world = init_process_group(cfg.train.distributed_timeout_s)
        self.out = Path(cfg.train.output_dir)
        check_output_dir(self.out)
        self.lock = self._claim_output_dir(resume, overwrite)
        try:
            self._start(cfg, resume, trust_checkpoint, resume_with_changes)
        except BaseException:
            self.release_output_dir()
            raise

    def _start(self, cfg: RunConfig, resume: bool, trust_checkpoint: bool, resume_with_changes: tuple[str, ...]
               ) -> None:
        self.resume_tag = self._agreed(lambda: verify(self.out, self.out / CHECKPOINTS, trust_checkpoint)) \
            if resume else None
        changes = check_resume(self.out, cfg, resume_with_changes) if resume else []
        self.logger = RunLogger(self.out, enabled=self.rank == 0)
        self.logger.log("run", 0, {"stage": cfg.train.stage, "world_size": self.world, "ep_size": cfg.mta.ep_size,
                                   "resume": resume, "config": cfg.source, "changed_on_resume": changes})
        self._setup_data_and_model()
        check_free_space(self.out, sum(p.numel() for p in self.model.parameters()))
        self._setup_engine()
        if resume:  # the engine, sampler and monitor are built: their state comes from the checkpoint
            self._load_checkpoint()
        self._apply_unfreeze()
        if self.rank == 0:  # started: the run's record
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "run_config.json").write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
            if not resume:
                record_data(self.out, cfg)
            self.run_id = read_run_id(self.out) if resume and read_run_id(self.out) else new_run_id(self.out)
        self.logger.start()
        barrier()

    def run(self) -> dict[str, float]:
        t, engine = self.cfg.train, self.engine
        micro, accum = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
        bar = tqdm(total=t.steps, initial=self.step, disable=self.rank != 0, desc=f"stage {t.stage}")
        scores: dict[str, float] = {}
        end = t.steps if t.stop_at_step is None else min(t.steps, t.stop_at_step)
        self.signals = StopSignals().install()
        try:
            self._loop(bar, end, micro, accum, scores)
        finally:  # also on an error: the bar's last line comes before the error's
            bar.close()
            self.signals.restore()
        if self.step < t.steps and not self.patience_spent():  # stopped early: resume from the checkpoint
            if self.step % t.save_every:
                self.save_checkpoint()
            self._info(f"stopped at step {self.step} of {t.steps}; continue with --resume")
            self.logger.close()
            return scores
        self.export(self.out / EXPORT, scores)
        self.logger.close()
        return scores

    def _loop(self, bar, end: int, micro: int, accum: int, scores: dict[str, float]) -> None:
        """Steps until ``end``: sample, train, log, validate (``scores`` holds the last validation), save."""
        t = self.cfg.train
        window_seconds, window_tokens = 0.0, None  # training time and tokens since the last train record
        while self.step < end:
            started = time.perf_counter()
            self._apply_unfreeze()
            picks = self.sampler.next_batch(micro * self.world * accum, self.step)
            step = self._train_step(picks, micro, accum)
            if step is None:  # a non-finite loss, skipped (mta.train.skip_nonfinite_batches)
                self._skipped_batch(picks)
                continue
            self.step += 1
            self.health.observe(self.step, step.loss, step.grad_norm, sorted({task for task, _ in picks}))
            window_tokens = step.tokens if window_tokens is None else window_tokens + step.tokens
            bar.update(1)
            if self.balance.method is not None:
                self.logger.log("task_weights", self.step, self.balance.current())
            log_now = self.step % t.log_every == 0 or self.step == t.steps
            eval_now = self.val_set is not None and (self.step % t.eval_every == 0 or self.step == t.steps)
            save_now = self.step % t.save_every == 0 or self.step == t.steps
            if log_now or eval_now or save_now:  # the one read-back of the device: before anything is kept
                self._check_finite()
            if log_now:
                stats = self._step_stats(step, window_tokens)  # waits for the device: the window's time is complete
                window_seconds += time.perf_counter() - started
                stats["tokens_per_s"] = stats.pop("tokens") / window_seconds
                window_seconds, window_tokens = 0.0, None
                self.logger.log("train", self.step, stats)
                self._log_routing()
                bar.set_postfix(loss=f"{stats['loss']:.3f}")
            else:
                window_seconds += time.perf_counter() - started
            if eval_now:
                scores.clear()
                scores.update(self.validate())
            if self.step in t.export_steps:
                self.export(self.out / f"{EXPORT}_step{self.step}", scores)
            if eval_now and self.patience_spent():
                self._info(f"step {self.step}: no better validation macro in {self.evals_since_best} validations "
                           f"(best {self.best:.3f}); stopping early (mta.train.early_stopping)")
                self.logger.log("early_stop", self.step, {"best": self.best,
                                                          "evals_since_best": self.evals_since_best})
                save_now = True
            if save_now:
                self.save_checkpoint()
            if eval_now and self.patience_spent():
                break
            signum = self.signals.agreed(self.world)
            if signum is not None:  # SIGTERM / SIGINT: this step's checkpoint, then stop
                if not save_now:
                    self.save_checkpoint()
                self.logger.log("stopped", self.step, {"signal": signum})
                self.logger.close()
                raise StopRequested(signum, self.step, f"step{self.step}")
        self._check_finite()  # a run stopped early (stop_at_step) keeps nothing non-finite either

    def _train_step(self, picks: list[tuple[str, int]], micro: int, accum: int) -> StepTensors | None:
        """One optimizer step over ``accum`` micro-batches; its statistics stay on the device (see
        :meth:`_step_stats`). None: a non-finite loss skipped before backward (``skip_nonfinite_batches``)."""
        engine, names = self.engine, self.data.registry.names
        device = engine.device
        task_loss = torch.zeros(len(names), dtype=torch.float64, device=device)
        task_count = torch.zeros(len(names), dtype=torch.float64, device=device)
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, aux sum, tokens
        share = micro * self.world
        normalizer = self._token_normalizer(accum)
        for a in range(accum):
            mine = rank_slice(picks[a * share:(a + 1) * share], self.rank, self.world)
            batch = self.collate([self.train_rows[self.task_rows[task][i]] for task, i in mine])
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            result = self.objective(engine, self.model, batch, self.step, normalizer)
            if self.cfg.train.skip_nonfinite_batches and not self._finite_on_every_rank(result.loss):
                return None  # before backward: nothing of this batch reaches the weights or the optimizer
            engine.backward(result.backward)
            engine.step()
            task_ids = batch["task_ids"]
            task_loss.index_add_(0, task_ids, result.per_sample.detach().double())
            task_count.index_add_(0, task_ids, torch.ones_like(task_ids, dtype=torch.float64))
            totals += torch.stack([result.loss.double(), result.aux.double(),
                                   batch["attention_mask"].sum().double()])
        return StepTensors(task_loss, task_count, totals, engine.get_global_grad_norm(), accum)

    def _token_normalizer(self, accum: int) -> float | None:
        """With length-grouped batches and the ``token`` reduction: the window's mean scored tokens per
        micro-batch, the divisor of every micro-batch's loss in the window (None: each batch's own count)."""
        per_batch = self.sampler.tokens_per_batch
        if per_batch is None or self.cfg.train.loss_reduction != "token":
            return None
        return max(per_batch / (accum * self.world), 1.0)

    def _step_stats(self, step: StepTensors, window_tokens: torch.Tensor) -> dict[str, Any]:
        """The logged record of one step, with ``tokens``: ``window_tokens`` summed over ranks; read back to the
        host here only (the logging steps)."""
        names = self.data.registry.names
        packed = torch.cat([step.task_loss, step.task_count, step.totals, window_tokens.reshape(1)])
        if self.world > 1:
            all_reduce(packed)
        packed = packed.cpu()
        n, ranks = len(names), step.accum * self.world
        task_loss, task_count, totals = packed[:n], packed[n:2 * n], packed[2 * n:2 * n + 3]
        norm = step.grad_norm
        stats = {"loss": totals[0].item() / ranks, "aux_loss": totals[1].item() / ranks,
                 "lr": self.scheduler.get_last_lr()[0], "grad_norm": None if norm is None else float(norm),
                 "task_loss": {t: task_loss[i].item() / task_count[i].item() for i, t in enumerate(names)
                               if task_count[i] > 0},
                 "tokens": packed[-1].item()}
        conflicts = self.objective.pop_conflicts()
        if conflicts is not None:
            stats["pcgrad_conflicts"] = conflicts
        return stats

    def _check_finite(self) -> None:
        """Stop (:class:`DivergedError`) if any step since the start had a non-finite loss or gradient norm."""
        bad = self.health.first_bad(self.world)
        if bad is not None:
            step, loss, norm, tasks = bad
            self._diverged({"loss": loss, "grad_norm": norm}, tasks, step=step)

    def _finite_on_every_rank(self, loss: torch.Tensor) -> bool:
        bad = torch.tensor([0.0 if math.isfinite(float(loss)) else 1.0])
        if self.world > 1:
            all_reduce(bad, op=dist.ReduceOp.MAX)
        return bad.item() == 0.0

    def _skipped_batch(self, picks: list[tuple[str, int]]) -> None:
        """Count and log a skipped batch; one more than ``skip_nonfinite_batches`` stops the run as diverged."""
        self.skipped += 1
        tasks = sorted({task for task, _ in picks})
        allowed = self.cfg.train.skip_nonfinite_batches
        self.logger.log("skipped_batch", self.step + 1, {"tasks": tasks, "skipped": self.skipped, "allowed": allowed})
        if self.skipped > allowed:
            self._diverged({"loss": float("nan"), "grad_norm": None}, tasks,
                           f"{self.skipped} batches with a non-finite loss, more than "
                           f"mta.train.skip_nonfinite_batches ({allowed}) allows")
        log.warning(f"step {self.step + 1}: non-finite loss on a batch of tasks {tasks}; skipped it "
                    f"({self.skipped} of {allowed} allowed)")

    def _diverged(self, stats: dict[str, Any], tasks: list[str], why: str = "", step: int | None = None) -> None:
        """The first step whose loss or gradient norm is not finite: stop before anything is saved from it."""
        step = self.step + 1 if step is None else step
        self.logger.log("diverged", step, {"loss": stats["loss"], "grad_norm": stats["grad_norm"]})
        self.logger.close()
        last = latest_tag(self.out / CHECKPOINTS) or "none"
        raise DivergedError(f"step {step}: {why + '; ' if why else ''}loss {stats['loss']}, gradient norm "
                            f"{stats['grad_norm']} on a "
                            f"batch of tasks {tasks}; stopped before saving anything "
                            f"from it (last checkpoint: {last}; export/ and best/ hold only earlier, finite models). "
                            "Lower mta.train.lr or raise gradient_clipping, then --resume or start again")

    def _log_routing(self) -> None:
        """Routing since the last record, summed over ranks: per layer, sequences per task type and
        adapter, mean gate weights (and stage-2 mixing weights); then the counters restart."""
        layers = {}
        for name, layer in self.model.mta_layers.items():
            layers[name] = layer.get_routing_stats(all_reduce=self.world > 1).as_dict()
            layer.reset_routing_stats()
        self.logger.log("routing", self.step, {"layers": layers})
        self.monitor.add_routing(layers)

    def _warn(self, warnings: list[dict[str, Any]]) -> None:
        for warning in warnings:
            self.logger.log("warning", self.step, warning)
            log.warning(f"step {self.step}: {warning['message']}")

    def validate(self) -> dict[str, float]:
        """Greedy generations on the validation split scored per task; ``scores`` holds each task's
        primary metric and ``macro`` (what selects the best export); ``metrics`` all of them."""
        t = self.cfg.train
        prompt_only = None if self.mode == "seq2seq" else causal_prompt
        predictions = generate_predictions(self.model, self.val_set, self.tokenizer, self.collate, t.eval_batch_size,
                                           t.max_new_tokens, lockstep=self.cfg.mta.ep_size > 1,
                                           device=self.engine.device, prompt_only=prompt_only)
        result = score_predictions(list(self.val_set["task"]), list(self.val_set["target"]), predictions,
                                   {k: v["kind"] for k, v in self.profiles.items()}, self.data.registry.type_of,
                                   {k: v["labels"] for k, v in self.profiles.items()})
        scores = {task: m["primary"] for task, m in result["tasks"].items()}
        scores["macro"] = result["macro"]
        self.logger.log("validation", self.step, {"scores": scores, "metrics": result["tasks"],
                                                   "by_type": result["by_type"]})
        if self.rank == 0:  # what each validation example generated, for inspection and comparison
            folder = self.out / "predictions"
            folder.mkdir(exist_ok=True)
            rows = zip(self.val_set["task"], self.val_set["target"], predictions)
            (folder / f"step{self.step}.jsonl").write_text("".join(
                json.dumps({"task": task, "target": target, "prediction": text}) + "\n" for task, target, text in rows))
        self._info(f"step {self.step} validation: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        self._warn(self.monitor.check_validation(scores) + self.monitor.check_routing())
        self.balance.after_validation(scores, t.baseline_scores)
        self._update_sampling(scores)
        min_delta = (t.early_stopping or {}).get("min_delta", 0.0)
        self.evals_since_best = 0 if scores["macro"] > self.best + min_delta else self.evals_since_best + 1
        if scores["macro"] > self.best:
            self.best = scores["macro"]
            self.export(self.out / BEST, scores)
            self.logger.log("best", self.step, {"macro": self.best})
        return scores

    def patience_spent(self) -> bool:
        """``mta.train.early_stopping``: this many validations in a row without a better macro."""
        spec = self.cfg.train.early_stopping
        return spec is not None and self.evals_since_best >= spec["patience"]

    def _update_sampling(self, scores: dict[str, float]) -> None:
        """``sampling.strategy: dynamic``: re-weight the mixture from this validation (task losses, or the
        scores with ``dynamic_signal: metric``) and log the new rates."""
        sampling = self.cfg.data.sampling
        if sampling.strategy != "dynamic":
            return
        if sampling.dynamic_signal == "loss":
            signal = task_losses(self.model, self.val_rows, self.data.registry.names, self.collate,
                                 self.cfg.train.eval_batch_size, self.engine.device, self.mode == "causal")
        else:
            signal = {task: scores[task] for task in self.sampler.tasks}
        rates = self.sampler.update_dynamic({task: signal[task] for task in self.sampler.tasks})
        self.logger.log("sampling", self.step, {"signal": signal, "rates": rates})
        self._info(f"step {self.step} mixing rates: " + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))

    def save_checkpoint(self) -> None:
        """A DeepSpeed checkpoint tagged by step; its manifest, then ``latest``, once every file is written."""
        state = {"step": self.step, "best": self.best, "skipped": self.skipped, "monitor": self.monitor.state_dict(),
                 "evals_since_best": self.evals_since_best,
                 "sampler": self.sampler.state_dict(),
                 "torch_rng": torch.get_rng_state(), "stage": self.cfg.train.stage}
        tag = f"step{self.step}"
        try:
            self.engine.save_checkpoint(str(self.out / CHECKPOINTS), tag=tag, client_state=state, save_latest=False)
        except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as a RuntimeError
            kept = latest_tag(self.out / CHECKPOINTS) or "no checkpoint"
            raise CheckpointError(f"could not write checkpoint {self.out / CHECKPOINTS / tag} "
                                  f"({str(exc).splitlines()[0]}); latest still names {kept}, intact") from None
        barrier()  # every rank's files are written
        if self.rank == 0:
            commit(self.out / CHECKPOINTS, tag, self.step, self.run_id)
        barrier()

    def _load_checkpoint(self) -> None:
        directory = self.out / CHECKPOINTS
        try:
            path, state = self.engine.load_checkpoint(str(directory), tag=self.resume_tag)
        except Exception as exc:  # noqa: BLE001 - DeepSpeed and torch.load raise many types for a bad file
            raise CheckpointError(f"--resume: DeepSpeed could not load {directory / self.resume_tag} "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        if path is None:
            raise CheckpointError(f"--resume: DeepSpeed could not load {directory / self.resume_tag}")
        if state.get("stage") != self.cfg.train.stage:
            raise ConfigError(f"--resume: {path} is a stage-{state.get('stage')} checkpoint; this run is stage "
                              f"{self.cfg.train.stage}")
        self.step, self.best, self.skipped = int(state["step"]), float(state["best"]), int(state.get("skipped", 0))
        self.evals_since_best = int(state.get("evals_since_best", 0))
        self.monitor.load_state_dict(state.get("monitor", {}))
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        self._info(f"resumed from {path} at step {self.step}")

    def export(self, directory: Path, scores: dict[str, float] | None = None) -> None:
        """Consolidated, ep-size-independent model (safetensors + configs), tokenizer and model card, loadable with
        ``MTAModel.from_pretrained`` at any ep size; ``scores``: the validation scores the card lists."""
        state = gathered_state(self.model)  # every rank takes part; rank 0 gets all adapters
        if self.rank == 0:
            write_export(directory, self.model, state, self.tokenizer, self.data.registry, self.profiles, scores,
                         self.step, card_source(self.cfg))
        barrier()
