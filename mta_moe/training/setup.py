"""Building one training stage: data, the model (fresh, from an export, or grown), parameter groups and the
DeepSpeed engine. :class:`~.trainer.Trainer` runs what this builds."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import deepspeed
import pydantic
import torch
import torch.distributed as dist

from ..collectives import all_reduce
from ..config import ConfigError, sharing_adapters
from ..data import IGNORE_INDEX, Collator, load_task_data, load_tokenizer, make_sampler, tokenize_examples
from ..data.tokenizer import check_tokenizer
from ..logs import get_logger
from ..metrics import profile_tasks
from ..modeling import MTAModel, format_parameter_counts
from ..modeling.persistence import read_saved_config
from .add_task import grow_for_training, growth_param_groups
from .checkpoints import CheckpointError
from .distributed import barrier
from .logger import monitor_config
from .losses import task_weight_vector
from .model_factory import build_backbone, build_tokenizer, model_mode
from .monitor import TrainingMonitor
from .objective import Objective, TrainingModule
from .param_groups import optimizer_param_groups, pattern_param_groups
from .run_dir import RunDirError, RunDirLock, claim
from .stages import restart_config
from .step_health import StepHealth
from .task_balance import TaskBalance
from .unfreezing import UnfreezeSchedule

EXPORT = "export"

log = get_logger(__name__)


class RunSetup:
    """The setup half of :class:`~.trainer.Trainer`: everything built before the first step."""

    def _claim_output_dir(self, resume: bool, overwrite: bool) -> RunDirLock | None:
        """Rank 0 claims the directory (:func:`.run_dir.claim`); every rank learns whether it could."""
        return self._agreed(lambda: claim(self.out, resume, overwrite), ranks=(0,))

    def _agreed(self, check, ranks: tuple[int, ...] | None = None):
        """``check()`` on ``ranks`` (None: every rank); when it raises on any rank, every rank raises (the failing
        ranks their own error, the others one that names it), so no rank waits in a collective for one that left."""
        result, error = None, None
        if ranks is None or self.rank in ranks:
            try:
                result = check()
            except (RunDirError, CheckpointError) as exc:
                error = exc
        failed = torch.tensor([0.0 if error is None else 1.0])
        if self.world > 1:
            all_reduce(failed, op=dist.ReduceOp.MAX)
        if error is not None:
            raise error
        if failed.item():
            raise CheckpointError(f"another rank refused to start in {self.out} (its error names why)")
        return result

    def release_output_dir(self) -> None:
        """Remove this run's lock on its output directory (rank 0; once)."""
        if self.lock is not None:
            self.lock.release()

    def _setup_data_and_model(self) -> None:
        cfg = self.cfg
        self.layer = cfg.mta if cfg.train.init_from is None else self._restart_config(Path(cfg.train.init_from))
        task_types = cfg.mta.task_types if cfg.train.add_task_types is not None else self.layer.task_types
        if self.rank == 0:  # generates the bundled suite once; the other ranks read it afterwards
            self.data = load_task_data(cfg.data, task_types, self.out / "data", cfg.check_task_names)
        barrier()
        if self.rank != 0:
            self.data = load_task_data(cfg.data, task_types, self.out / "data", cfg.check_task_names)
        for report in self.data.reports:
            self._info(report.summary())
        train_texts = list(self.data.splits["train"]["input"]) + list(self.data.splits["train"]["target"])
        self.new_tasks: list[str] = []
        if cfg.train.init_from is None:  # stage 1 (stage 2 and add_task_types start from an export)
            # trained once, by rank 0 (the other ranks load it); a resumed run keeps the tokenizer it trained with
            train_here = not (self.resume and (self.out / "tokenizer").is_dir())
            if self.rank == 0:
                self.tokenizer = build_tokenizer(cfg.model, train_texts, self.out / "tokenizer", train_here=train_here)
            barrier()
            if self.rank != 0:
                self.tokenizer = build_tokenizer(cfg.model, train_texts, self.out / "tokenizer", train_here=False)
            base = build_backbone(cfg.model, self.tokenizer, cfg.train.seed)
            self.model = MTAModel(base, self._layer_config())
        else:
            self._load_init_from(Path(cfg.train.init_from))
        self.mode = model_mode(self.model.base_model)
        if cfg.train.activation_checkpointing:
            self.model.activation_checkpointing_enable()
        self.collate = Collator(self.tokenizer.pad_token_id, self.mode,
                                padding_side="right" if self.mode == "seq2seq" else "left")
        d = cfg.data
        self.train_set, report = tokenize_examples(self.data.splits["train"], self.tokenizer, self.data.registry,
                                                   d.max_input_length, d.max_target_length, self.mode)
        self._info(report.summary())
        self.logger.log("truncation", 0, {"train": report.counts})
        self.val_set, self.val_rows = None, []
        if "validation" in self.data.splits:
            self.val_set, _ = tokenize_examples(self.data.splits["validation"], self.tokenizer,
                                                self.data.registry, d.max_input_length, d.max_target_length,
                                                "seq2seq" if self.mode == "seq2seq" else "causal")
            self.val_rows = self.val_set.select_columns(["input_ids", "labels", "task_type_id", "task_id"]).to_list()
        self.task_rows = self.data.task_indices()
        # the collated columns as plain Python rows, read once: indexing a datasets.Dataset formats a row per call
        self.train_rows = self.train_set.select_columns(["input_ids", "labels", "task_type_id", "task_id"]).to_list()
        self.growth = None
        sampled = list(self.task_rows)
        if cfg.train.add_task_types is not None:
            sampled = self._grow()
        self.sampler = make_sampler(d, {t: len(self.task_rows[t]) for t in sampled}, self._example_length,
                                    cfg.train.steps)
        if d.sampling.strategy == "dynamic":
            validated = set(self.val_set["task"]) if self.val_set is not None else set()
            missing = [t for t in sampled if t not in validated]
            if missing:
                raise ConfigError("mta.data.sampling.strategy: 'dynamic' re-weights the mixture after each "
                                  f"validation, but tasks {missing} have no validation rows")
        static = task_weight_vector(self.cfg.train.task_weights, self.data.registry.names)
        self.balance = TaskBalance(self.cfg.train.weighting, self.data.registry.names, static)
        train = self.data.splits["train"]
        suite = d.suite_tasks()
        declared = {name: suite[name].kind for name in self.data.registry.names if name in suite}
        self.profiles = profile_tasks(list(train["task"]), list(train["input"]), list(train["target"]),
                                      {**declared, **d.task_kinds})

    def _example_length(self, task: str, index: int) -> tuple[int, int]:
        """Input tokens and scored target tokens of a training example (``mta.data.group_by_length`` orders
        by them)."""
        row = self.train_rows[self.task_rows[task][index]]
        return len(row["input_ids"]), sum(label != IGNORE_INDEX for label in row["labels"])

    def _layer_config(self):
        """``mta`` for a stage-1 model; routing by task names the data's tasks (ids follow ``mta.tasks``)."""
        mta, registry = self.layer, self.data.registry
        if mta.route_by == "task":
            if mta.tasks is None:
                mta = mta.replace(tasks=list(registry.names))
            self.data.registry = registry.in_order(mta.tasks)
        shared = sharing_adapters(mta)
        if shared:
            log.warning(f"{mta.num_routes} routing keys (mta.route_by {mta.route_by!r}) on {mta.num_experts} adapters: "
                        + "; ".join(f"adapter {a} starts shared by {', '.join(keys)}" for a, keys in shared.items())
                        + " (set mta.num_experts to the number of keys, or mta.task_adapter_assignment, to change it)")
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
        # (adding task types moves tasks to the new types on purpose: mta.data.type_overrides)
        trained_types = json.loads((source / "tasks.json").read_text())["tasks"] \
            if (source / "tasks.json").is_file() and not growing else {}
        changed = {t: (trained_types[t], ty) for t, ty in self.data.registry.type_of.items()
                   if t in trained_types and trained_types[t] != ty}
        if changed:
            task, (was, now) = sorted(changed.items())[0]
            raise ConfigError(f"mta.data: task {task!r} has type {now!r} in this run's data but the export at {source} "
                              f"was trained with it as {was!r}; use the same mta.data.type_overrides as that run")
        self.tokenizer = load_tokenizer(source)
        check_tokenizer(self.tokenizer, source, f"mta.train.init_from {source}: the tokenizer files")
        self.model = MTAModel.from_pretrained(source, ep_size=self.cfg.mta.ep_size, config=self.layer)
        if self.cfg.train.stage == 1 and not growing and self.model.stage != 1:
            raise ConfigError(f"mta.train.init_from: {source} is a stage-{self.model.stage} export; a stage-1 run "
                              "continues stage-1 exports only")
        if self.model.stage == 1 and not growing and self.cfg.train.stage == 2:
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
        zero = self.cfg.ds.get("zero_optimization", {}).get("stage", 0)
        if zero in (1, 2) and not any(g.get("moe") for g in groups):
            raise ConfigError("mta.train.trainable: no trainable adapter (MoE expert) parameter; DeepSpeed's ZeRO "
                              f"stage {zero} needs at least one (add a pattern such as '*deepspeed_experts*'), or "
                              "set zero_optimization.stage to 0 to train without them")
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

        # a DeepSpeed "scheduler" section (WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle...) is DeepSpeed's
        # to build over this optimizer; without one, the trainer's own warm-up / linear decay
        scheduler = None if "scheduler" in self.cfg.ds else torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        ds = monitor_config(self.cfg.ds, self.out)
        ds.setdefault("zero_allow_untested_optimizer", True)
        ds.setdefault("steps_per_print", 10**9)
        try:
            self.engine, _, _, self.scheduler = deepspeed.initialize(model=TrainingModule(self.model, self.balance),
                                                                     optimizer=optimizer, lr_scheduler=scheduler,
                                                                     config=ds)
        except pydantic.ValidationError as exc:  # DeepSpeed's own config models: one line naming the key
            first = exc.errors()[0]
            loc = [str(part) for part in first.get("loc", ())]
            sections = [k for k, v in ds.items() if isinstance(v, dict) and loc and loc[0] in v]
            where = ".".join(sections[:1] + loc) if len(sections) == 1 else ".".join(loc) or exc.title
            raise ConfigError(f"{where}: {first.get('msg')} (DeepSpeed's {exc.title})") from None
        if self.engine.monitor.enabled and self.rank == 0:  # the training records through DeepSpeed's monitors too
            self.logger.monitor = self.engine.monitor.write_events
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in self.engine.module.parameters()})
        checkpointed = sum(getattr(m, "gradient_checkpointing", False) is True for m in self.model.modules())
        e = self.engine  # the engine's own view of the DeepSpeed keys, as it applies them
        self.logger.log("engine", 0, {"device": str(e.device), "param_dtypes": dtypes,
                                      "zero_stage": e.zero_optimization_stage(),
                                      "activation_checkpointed_modules": checkpointed,
                                      "train_micro_batch_size_per_gpu": e.train_micro_batch_size_per_gpu(),
                                      "gradient_accumulation_steps": e.gradient_accumulation_steps(),
                                      "gradient_clipping": e.gradient_clipping(), "bf16": e.bfloat16_enabled(),
                                      "fp16": e.fp16_enabled(), "overlap_comm": e.zero_overlap_comm(),
                                      "contiguous_gradients": e.zero_contiguous_gradients(),
                                      "steps_per_print": e.steps_per_print()})
        self._info(f"engine: {self.engine.device}, parameters in {', '.join(dtypes)}, "
                   f"ZeRO stage {self.engine.zero_optimization_stage()}")
        if self.world == 1 and self.engine.zero_optimization_stage() > 0:
            self._info("one process: ZeRO partitions nothing here but adds a gradient hook per parameter; "
                       "--zero_optimization.stage 0 starts faster (the shipped configs keep 2 for multi-rank runs)")
        self.step, self.skipped, self.evals_since_best = 0, 0, 0
        self.best = -math.inf
        self.health = StepHealth(self.engine.device)
        self.monitor = TrainingMonitor(t.warn_margin, t.baseline_scores)
        self.objective = Objective(t, self.balance, self.mode, self.world)
        if self.balance.method == "gradnorm":
            waiting = [p for u in self.unfreeze.units for p in u.params] if self.unfreeze else []
            named = self.balance.gradnorm_parameters(self.model, exclude=waiting)
            self.objective.gradnorm_params = [p for _, p in named]
            self._info(f"GradNorm: gradient norms w.r.t. {[n for n, _ in named]}")

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

    @staticmethod
    def _info(message: str) -> None:
        """A progress message (``mta_moe`` logger; printed by rank 0 under the command-line handler)."""
        log.info(message)
