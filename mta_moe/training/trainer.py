"""One training stage under a DeepSpeed engine: data, model, parameter groups, loop, validation,
checkpoints (resumable, sampler and RNG included) and the consolidated export."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..config import ConfigError
from ..data import (Collator, Curriculum, MixtureSampler, load_task_data, load_tokenizer,
                    rank_slice, tokenize_examples)
from ..data.suite import SUITE_TASKS
from ..evaluation.generation import causal_prompt, generate_predictions
from ..evaluation.metrics import profile_tasks, score_predictions
from ..modeling import MTAModel, format_parameter_counts
from ..modeling.persistence import gathered_state, read_saved_config, save_mta_model
from .add_task import grow_for_training, growth_param_groups
from .distributed import barrier, init_process_group
from .logger import RunLogger
from .monitor import TrainingMonitor
from .losses import task_weight_vector
from .model_factory import build_backbone, build_tokenizer, model_mode
from .objective import Objective, TrainingModule
from .param_groups import optimizer_param_groups, pattern_param_groups
from .run_config import RunConfig
from .stages import restart_config
from .task_balance import TaskBalance
from .unfreezing import UnfreezeSchedule

CHECKPOINTS = "checkpoints"
EXPORT = "export"
BEST = "best"


class Trainer:
    """``Trainer(cfg).run()`` trains one stage as configured and returns the final validation scores."""

    def __init__(self, cfg: RunConfig, resume: bool = False) -> None:
        self.cfg, self.resume = cfg, resume
        self.rank, self.world = init_process_group()
        self.out = Path(cfg.train.output_dir)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "run_config.json").write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
        barrier()
        self.logger = RunLogger(self.out, enabled=self.rank == 0)
        self.logger.log("run", 0, {"stage": cfg.train.stage, "world_size": self.world, "ep_size": cfg.mta.ep_size,
                                   "resume": resume, "config": cfg.source})
        self._setup_data_and_model()
        self._setup_engine()

    # ------------------------------------------------------------------ setup
    def _setup_data_and_model(self) -> None:
        cfg = self.cfg
        self.layer = cfg.mta if cfg.train.init_from is None else self._restart_config(Path(cfg.train.init_from))
        task_types = cfg.mta.task_types if cfg.train.add_task_types is not None else self.layer.task_types
        if self.rank == 0:  # generates the bundled suite once; the other ranks read it afterwards
            self.data = load_task_data(cfg.data, task_types, self.out / "data")
        barrier()
        if self.rank != 0:
            self.data = load_task_data(cfg.data, task_types, self.out / "data")
        for report in self.data.reports:
            self._info(report.summary())
        train_texts = list(self.data.splits["train"]["input"]) + list(self.data.splits["train"]["target"])
        self.new_tasks: list[str] = []
        if cfg.train.init_from is None:  # stage 1 (stage 2 and add_task_types start from an export)
            if self.rank == 0:  # trains the SentencePiece model once; the other ranks load it
                self.tokenizer = build_tokenizer(cfg.model, train_texts, self.out / "tokenizer", train_here=True)
            barrier()
            if self.rank != 0:
                self.tokenizer = build_tokenizer(cfg.model, train_texts, self.out / "tokenizer", train_here=False)
            base = build_backbone(cfg.model, self.tokenizer, cfg.train.seed)
            self.model = MTAModel(base, self._layer_config())
        else:
            self._load_init_from(Path(cfg.train.init_from))
        self.mode = model_mode(self.model.base_model)
        self.collate = Collator(self.tokenizer.pad_token_id, self.mode,
                                padding_side="right" if self.mode == "seq2seq" else "left")
        d = cfg.data
        self.train_set, report = tokenize_examples(self.data.splits["train"], self.tokenizer, self.data.registry,
                                                   d.max_input_length, d.max_target_length, self.mode)
        self._info(report.summary())
        self.logger.log("truncation", 0, {"train": report.counts})
        self.val_set = None
        if "validation" in self.data.splits:
            self.val_set, _ = tokenize_examples(self.data.splits["validation"], self.tokenizer,
                                                self.data.registry, d.max_input_length, d.max_target_length,
                                                "seq2seq" if self.mode == "seq2seq" else "causal")
        self.task_rows = self.data.task_indices()
        # the collated columns as plain Python rows, read once: indexing a datasets.Dataset formats a row per call
        self.train_rows = self.train_set.select_columns(["input_ids", "labels", "task_type_id", "task_id"]).to_list()
        self.growth = None
        sampled = list(self.task_rows)
        if cfg.train.add_task_types is not None:
            sampled = self._grow()
        curriculum = Curriculum.from_list(d.curriculum, sampled) if d.curriculum else None
        self.sampler = MixtureSampler({t: len(self.task_rows[t]) for t in sampled}, d.sampling, d.seed, curriculum)
        static = task_weight_vector(self.cfg.train.task_weights, self.data.registry.names)
        self.balance = TaskBalance(self.cfg.train.weighting, self.data.registry.names, static)
        train = self.data.splits["train"]
        for key, mapping in (("mta.data.task_kinds", d.task_kinds),
                             ("mta.train.baseline_scores", self.cfg.train.baseline_scores)):
            unknown = sorted(set(mapping) - set(self.data.registry.names))
            if unknown:
                raise ConfigError(f"{key}.{unknown[0]}: unknown task; tasks in the data: {self.data.registry.names}")
        declared = {name: SUITE_TASKS[name].kind for name in self.data.registry.names
                    if d.suite is not None and name in SUITE_TASKS}
        self.profiles = profile_tasks(list(train["task"]), list(train["input"]), list(train["target"]),
                                      {**declared, **d.task_kinds})

    def _layer_config(self):
        """``mta`` for a stage-1 model; routing by task names the data's tasks (ids follow ``mta.tasks``)."""
        mta, registry = self.layer, self.data.registry
        if mta.route_by == "task":
            if mta.tasks is None:
                mta = mta.replace(tasks=list(registry.names))
            self.data.registry = registry.in_order(mta.tasks)
        return mta

    def _restart_config(self, source: Path):
        """The layer config of a run that starts from an export: the export's, with this run's keys applied where
        they can take effect (:func:`.stages.restart_config`); a key that cannot is refused by name."""
        cfg = self.cfg
        if not (source / "mta_config.json").is_file():
            raise ConfigError(f"mta.train.init_from: {source} is not a stage-1 export (no mta_config.json); "
                              f"run stage 1 first or point to its {EXPORT}/ directory")
        self.saved_stage, saved = read_saved_config(source)
        growing = cfg.train.add_task_types is not None
        return restart_config(saved, self.saved_stage, cfg.mta, cfg.mta_keys | {"ep_size"}, str(source), growing)

    def _load_init_from(self, source: Path) -> None:
        """Stage 2 (or adding task types) from an export, built with :meth:`_restart_config`'s layer config; the
        data's task ids follow a by-task model's order."""
        growing = self.cfg.train.add_task_types is not None
        trained_types = json.loads((source / "tasks.json").read_text())["tasks"] if (source / "tasks.json").is_file() \
            else {}
        changed = {t: (trained_types[t], ty) for t, ty in self.data.registry.type_of.items()
                   if t in trained_types and trained_types[t] != ty}
        if changed:
            task, (was, now) = sorted(changed.items())[0]
            raise ConfigError(f"mta.data: task {task!r} has type {now!r} in this run's data but the export at {source} "
                              f"was trained with it as {was!r}; use the same mta.data.type_overrides as that run")
        self.tokenizer = load_tokenizer(source)
        self.model = MTAModel.from_pretrained(source, ep_size=self.cfg.mta.ep_size, config=self.layer)
        if self.model.stage == 1 and not growing:
            self.model.enable_stage2()
        if self.layer.route_by == "task":
            trained = list(self.layer.tasks)
            self.new_tasks = sorted(set(self.data.registry.names) - set(trained)) if growing else []
            self.data.registry = self.data.registry.in_order(trained + self.new_tasks)

    def _grow(self) -> list[str]:
        """Add the new task types to the init_from export; training batches come from their tasks only."""
        cfg, registry = self.cfg, self.data.registry
        if self.model.mta_config.route_by == "task":  # the new routing keys are the data's new tasks
            tasks = self.new_tasks
            rows = {t: [self.train_rows[i] for i in self.task_rows[t]] for t in tasks}
        else:
            trained = self.model.mta_config.task_types
            new_types = [ty for ty in cfg.mta.task_types if ty not in trained]
            tasks = [t for t in registry.names if registry.type_of[t] in new_types]
            rows = {ty: [self.train_rows[i] for t in tasks if registry.type_of[t] == ty for i in self.task_rows[t]]
                    for ty in new_types}
        self.model, self.growth = grow_for_training(Path(cfg.train.init_from), cfg.mta.task_types,
                                                    cfg.train.add_task_types, cfg.mta.ep_size, rows, self.collate,
                                                    self._info, new_keys=tasks)
        self.logger.log("add_task_types", 0, {"new_types": self.growth.new_types, "tasks": tasks,
                                              "new_adapters": self.growth.new_experts,
                                              "warm_start": self.growth.warm_start})
        return tasks

    def _param_groups(self) -> list[dict[str, Any]]:
        t = self.cfg.train
        self.unfreeze = None
        if self.growth is not None:
            groups = growth_param_groups(self.model, self.growth, t.lr, t.weight_decay)
        elif t.trainable is not None:
            unused = [p for layer in self.model.mta_layers.values() for p in layer.selector.unused_parameters()]
            groups = pattern_param_groups(self.model, t.trainable, t.lr, t.weight_decay, keep_frozen=unused)
        elif t.unfreeze is not None:
            self.unfreeze = UnfreezeSchedule(self.model, t.unfreeze.get("start_step", 0), t.unfreeze["every"])
            groups = self.unfreeze.param_groups(t.lr, t.weight_decay)
        else:
            if t.stage == 2:
                self.model.freeze_all_but_mta()
            groups = optimizer_param_groups(self.model, t.lr, t.weight_decay)
        return groups + self.balance.param_groups()

    def _setup_engine(self) -> None:
        t = self.cfg.train
        groups = self._param_groups()
        self._info(format_parameter_counts(self.model))
        optimizer = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
        warmup, total = t.warmup_steps, t.steps

        def schedule(step: int) -> float:  # linear warmup, then linear decay to 10 %
            if step < warmup:
                return (step + 1) / warmup
            return max(0.1, 1.0 - 0.9 * (step - warmup) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        ds = dict(self.cfg.ds)
        ds.setdefault("zero_allow_untested_optimizer", True)
        ds.setdefault("steps_per_print", 10**9)
        self.engine, _, _, self.scheduler = deepspeed.initialize(model=TrainingModule(self.model, self.balance),
                                                                 optimizer=optimizer, lr_scheduler=scheduler,
                                                                 config=ds)
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in self.engine.module.parameters()})
        self.logger.log("engine", 0, {"device": str(self.engine.device), "param_dtypes": dtypes,
                                      "zero_stage": self.engine.zero_optimization_stage()})
        self._info(f"engine: {self.engine.device}, parameters in {', '.join(dtypes)}, "
                   f"ZeRO stage {self.engine.zero_optimization_stage()}")
        self.step = 0
        self.best = -math.inf
        self.monitor = TrainingMonitor(t.warn_margin, t.baseline_scores)
        self.objective = Objective(t, self.balance, self.mode, self.world)
        if self.balance.method == "gradnorm":
            waiting = [p for u in self.unfreeze.units for p in u.params] if self.unfreeze else []
            named = self.balance.gradnorm_parameters(self.model, exclude=waiting)
            self.objective.gradnorm_params = [p for _, p in named]
            self._info(f"GradNorm: gradient norms w.r.t. {[n for n, _ in named]}")
        if self.resume:
            self._load_checkpoint()
        self._apply_unfreeze()

    def _apply_unfreeze(self) -> None:
        """Gradual unfreezing: switch the blocks whose turn has come (logged as ``unfreeze`` records)."""
        if self.unfreeze is None:
            return
        newly = self.unfreeze.apply(self.step, self.engine.optimizer)
        if newly:
            self.logger.log("unfreeze", self.step, {"blocks": newly, "unfrozen": self.unfreeze.unfrozen,
                                                    "of": len(self.unfreeze.units)})
            self._info(f"step {self.step}: unfroze {', '.join(newly)} "
                       f"({self.unfreeze.unfrozen}/{len(self.unfreeze.units)} blocks)")

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, float]:
        t, engine = self.cfg.train, self.engine
        micro, accum = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
        bar = tqdm(total=t.steps, initial=self.step, disable=self.rank != 0, desc=f"stage {t.stage}")
        scores: dict[str, float] = {}
        end = t.steps if t.stop_at_step is None else min(t.steps, t.stop_at_step)
        while self.step < end:
            started = time.perf_counter()
            self._apply_unfreeze()
            picks = self.sampler.next_batch(micro * self.world * accum, self.step)
            stats = self._train_step(picks, micro, accum)
            self.step += 1
            bar.update(1)
            if self.balance.method is not None:
                self.logger.log("task_weights", self.step, self.balance.current())
            if self.step % t.log_every == 0 or self.step == t.steps:
                stats["tokens_per_s"] = stats.pop("tokens") / (time.perf_counter() - started)
                self.logger.log("train", self.step, stats)
                self._log_routing()
                bar.set_postfix(loss=f"{stats['loss']:.3f}")
            if self.val_set is not None and (self.step % t.eval_every == 0 or self.step == t.steps):
                scores = self.validate()
            if self.step % t.save_every == 0 or self.step == t.steps:
                self.save_checkpoint()
        bar.close()
        if self.step < t.steps:  # stopped early: the checkpoint is the state to resume from
            if self.step % t.save_every:
                self.save_checkpoint()
            self._info(f"stopped at step {self.step} of {t.steps}; continue with --resume")
            self.logger.close()
            return scores
        self.export(self.out / EXPORT)
        self.logger.close()
        return scores

    def _train_step(self, picks: list[tuple[str, int]], micro: int, accum: int) -> dict[str, Any]:
        engine, names = self.engine, self.data.registry.names
        task_loss = torch.zeros(len(names), dtype=torch.float64)
        task_count = torch.zeros(len(names), dtype=torch.float64)
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, aux sum, tokens
        share = micro * self.world
        for a in range(accum):
            mine = rank_slice(picks[a * share:(a + 1) * share], self.rank, self.world)
            batch = self.collate([self.train_rows[self.task_rows[task][i]] for task, i in mine])
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            result = self.objective(engine, self.model, batch, self.step)
            engine.backward(result.backward)
            engine.step()
            task_loss.index_add_(0, batch["task_ids"].cpu(), result.per_sample.detach().double().cpu())
            task_count.index_add_(0, batch["task_ids"].cpu(), torch.ones(len(mine), dtype=torch.float64))
            totals += torch.tensor([result.loss, result.aux, float(batch["attention_mask"].sum())],
                                   dtype=torch.float64)
        packed = torch.cat([task_loss, task_count, totals])
        if self.world > 1:
            dist.all_reduce(packed)
        n = len(names)
        task_loss, task_count, totals = packed[:n], packed[n:2 * n], packed[2 * n:]
        norm = engine.get_global_grad_norm()
        stats = {"loss": totals[0].item() / (accum * self.world), "aux_loss": totals[1].item() / (accum * self.world),
                 "lr": self.scheduler.get_last_lr()[0], "grad_norm": None if norm is None else float(norm),
                 "task_loss": {t: task_loss[i].item() / task_count[i].item() for i, t in enumerate(names)
                               if task_count[i] > 0},
                 "tokens": totals[2].item()}
        conflicts = self.objective.pop_conflicts()
        if conflicts is not None:
            stats["pcgrad_conflicts"] = conflicts
        return stats

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
            self._info(f"warning at step {self.step}: {warning['message']}")

    # ------------------------------------------------------------------ validation
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
        if scores["macro"] > self.best:
            self.best = scores["macro"]
            self.export(self.out / BEST)
            self.logger.log("best", self.step, {"macro": self.best})
        return scores

    # ------------------------------------------------------------------ checkpoints and export
    def save_checkpoint(self) -> None:
        """A DeepSpeed checkpoint tagged by step; ``latest`` moves only after every file is written."""
        state = {"step": self.step, "best": self.best, "monitor": self.monitor.state_dict(),
                 "sampler": self.sampler.state_dict(),
                 "torch_rng": torch.get_rng_state(), "stage": self.cfg.train.stage}
        self.engine.save_checkpoint(str(self.out / CHECKPOINTS), tag=f"step{self.step}", client_state=state,
                                    save_latest=True)

    def _load_checkpoint(self) -> None:
        directory = self.out / CHECKPOINTS
        if not (directory / "latest").is_file():
            raise FileNotFoundError(f"--resume: no checkpoint to resume from ({directory / 'latest'} is missing)")
        path, state = self.engine.load_checkpoint(str(directory))
        if path is None:
            raise FileNotFoundError(f"--resume: DeepSpeed could not load the checkpoint named in {directory / 'latest'}")
        if state.get("stage") != self.cfg.train.stage:
            raise ConfigError(f"--resume: {path} is a stage-{state.get('stage')} checkpoint; this run is stage "
                              f"{self.cfg.train.stage}")
        self.step, self.best = int(state["step"]), float(state["best"])
        self.monitor.load_state_dict(state.get("monitor", {}))
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        self._info(f"resumed from {path} at step {self.step}")

    def export(self, directory: Path) -> None:
        """Consolidated, ep-size-independent model (safetensors + configs) and tokenizer, loadable with
        ``MTAModel.from_pretrained`` at any ep size."""
        state = gathered_state(self.model)  # every rank takes part; rank 0 gets all adapters
        if self.rank == 0:
            save_mta_model(self.model, directory, state)
            self.tokenizer.save_pretrained(directory)
            tasks = {**self.data.registry.to_dict(), "profiles": self.profiles}
            (directory / "tasks.json").write_text(json.dumps(tasks, indent=2) + "\n")
        barrier()

    def _info(self, message: str) -> None:
        if self.rank == 0:
            tqdm.write(message)

