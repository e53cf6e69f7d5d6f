"""Turn a ``transformers`` model into an MTA model: replace chosen FFN sub-layers, plumb task ids."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ..config import ConfigError, MTAConfig
from .backbones import BackboneFamily, family_for, find_stack
from .gate import check_route_id_range
from .layer import LayerRouting, MTALayer, component_of
from .persistence import SavedModel, load_saved_state, read_saved_model, save_mta_model
from .task_heads import TaskHeads, pool

HEAD_SEED_OFFSET = 3_000  # the task heads' init seed: mta.init_seed + this (the layers use their own offsets)


@dataclass
class MTAContext:
    """Per-call inputs the MTA layers need but the backbone does not pass them: routing-key ids (task types or
    tasks), masks, routing cache. Set for the duration of one ``forward`` / ``generate`` call, then cleared."""

    route_ids: Tensor | None = None
    masks: dict[str, Tensor | None] = field(default_factory=dict)
    routing_cache: dict[str, LayerRouting] | None = None  # set while generating: routing decided once
    aux_losses: list[Tensor] = field(default_factory=list)
    recomputing: bool = False  # a checkpointed block is being recomputed: routing statistics already counted

    def rows(self, value: Tensor | None, batch: int, what: str) -> Tensor | None:
        """``value`` for a batch of ``batch`` rows; generation repeats each sample (beams, return sequences)."""
        if value is None or value.size(0) == batch:
            return value
        if batch % value.size(0) == 0:
            return value.repeat_interleave(batch // value.size(0), dim=0)
        raise ValueError(f"{what}: {value.size(0)} rows given for a batch of {batch} sequences")


class MTAFeedForward(nn.Module):
    """Stands where the backbone's FFN was; calls its :class:`MTALayer` with the current context."""

    def __init__(self, layer: MTALayer, stack: str, key: str, context: MTAContext) -> None:
        super().__init__()
        self.mta = layer
        self.stack = stack
        self.key = key
        self._context = context

    def forward(self, hidden_states: Tensor) -> Tensor:
        ctx, batch = self._context, hidden_states.size(0)
        cache = ctx.routing_cache
        routing = cache.get(self.key) if cache is not None else None
        if routing is not None and routing.selection.indices.size(0) != batch:
            routing = None
        route_ids = ctx.rows(ctx.route_ids, batch, "task ids")
        mask = ctx.rows(ctx.masks.get(self.stack), batch, "attention_mask")
        if routing is None and mask is not None and mask.shape[1] != hidden_states.shape[1]:
            raise ValueError(
                f"attention_mask covers {mask.shape[1]} positions but the {self.stack} sees "
                f"{hidden_states.shape[1]}: route the full sequence first (generate() does)"
            )
        out, l_aux, _ = self.mta(
            hidden_states, route_ids, mask, routing=routing, track=not ctx.recomputing, ids_checked=True
        )
        if cache is not None and routing is None:
            cache[self.key] = self.mta.last_routing
        ctx.aux_losses.append(l_aux)
        return out


def select_blocks(spec: str | list[int], num_blocks: int, stack: str) -> list[int]:
    """Block indices from ``all``, ``last:N`` or an explicit list (negative indices count from the end)."""
    if spec == "all":
        return list(range(num_blocks))
    if isinstance(spec, str) and spec.startswith("last:"):
        n = int(spec.split(":", 1)[1])
        if not 1 <= n <= num_blocks:
            raise ConfigError(f"mta.inject_layers: last:{n} but the {stack} has {num_blocks} blocks")
        return list(range(num_blocks - n, num_blocks))
    out = []
    for i in spec:
        j = i + num_blocks if i < 0 else i
        if not 0 <= j < num_blocks:
            raise ConfigError(f"mta.inject_layers: block {i} is out of range for the {stack} ({num_blocks} blocks)")
        out.append(j)
    return sorted(set(out))


class MTAModel(nn.Module):
    """A ``transformers`` model with MTA layers in place of chosen FFNs.

    ``model(**batch, task_type_ids=..., task_ids=...)`` and ``model.generate(..., task_type_ids=...)`` route each
    sequence by its own task type (or, with ``mta.route_by: task``, by its task id: a position in
    ``mta.tasks``); the summed aux loss is added to ``outputs.loss``.

    Args:
        base_model: a transformers model of a supported family (T5, BART, GPT-2, Llama, Qwen2, BERT/RoBERTa).
        config: the MTA layer settings; the layers replace the FFNs that ``config.inject_layers`` names.
    """

    def __init__(self, base_model: nn.Module, config: MTAConfig) -> None:
        super().__init__()
        self.base_model = base_model
        self.mta_config = config
        self.family: BackboneFamily = family_for(base_model)
        self._context = MTAContext()
        self.last_aux_loss: Tensor | None = None
        self.mta_layers = self._inject()
        self.task_heads = self._heads()

    # -------------------------------------------------------------- injection
    def _stacks(self) -> list[str]:
        wanted = self.mta_config.inject_stacks
        available = list(self.family.stacks)
        if wanted == "both":
            return available
        if wanted not in available:
            raise ConfigError(
                f"mta.inject_stacks: {wanted!r} is not a stack of {self.family.name} models "
                f"(stacks: {available}, or 'both')"
            )
        return [wanted]

    def _inject(self) -> dict[str, MTALayer]:
        hidden = getattr(self.base_model.config, self.family.hidden_size_attr)
        layers: dict[str, MTALayer] = {}
        for stack_id, stack in enumerate(self._stacks()):
            _, blocks = find_stack(self.base_model, self.family.stacks[stack])
            for idx in select_blocks(self.mta_config.inject_layers, len(blocks), stack):
                block = blocks[idx]
                ffn = self.family.get_ffn(block)
                ref = next(ffn.parameters())
                layer = MTALayer(self.mta_config, hidden, ffn, layer_id=stack_id * 1000 + idx)
                layer.to(device=ref.device, dtype=ref.dtype)
                key = f"{stack}.{idx}"
                self.family.set_ffn(block, MTAFeedForward(layer, stack, key, self._context))
                layers[key] = layer
        return layers

    def _heads(self) -> TaskHeads | None:
        """``mta.task_heads``: one classifier per task over the bare encoder's pooled output (encoder backbones)."""
        labels = self.mta_config.task_heads
        if labels is None:
            return None
        base_config = self.base_model.config
        if (
            self.family.name != "bert"
            or hasattr(self.base_model, "classifier")
            or hasattr(self.base_model, "cls")
            or hasattr(self.base_model, "lm_head")
        ):
            raise ConfigError(
                f"mta.task_heads: task heads sit on a bare encoder (BertModel, RobertaModel, AutoModel); "
                f"got {type(self.base_model).__name__}"
            )
        heads = TaskHeads(
            labels,
            base_config.hidden_size,
            base_config.hidden_dropout_prob,
            base_config.initializer_range,
            seed=self.mta_config.init_seed + HEAD_SEED_OFFSET,
        )
        ref = next(self.base_model.parameters())
        return heads.to(device=ref.device, dtype=ref.dtype)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base_model"), name)

    # ------------------------------------------------------------- stages
    @property
    def stage(self) -> int:
        return next(iter(self.mta_layers.values())).stage

    def enable_stage2(self) -> None:
        """Add shared adapters + gate network to every MTA layer (outputs unchanged at the switch)."""
        for layer in self.mta_layers.values():
            layer.enable_stage2()

    def freeze_all_but_mta(self) -> None:
        """Stage-2 freezing: only adapters, selector, shared adapters and gate network stay trainable (an encoder's
        task heads are frozen with the backbone)."""
        for name, param in self.named_parameters():
            param.requires_grad_(component_of(name) not in ("backbone", "task_heads"))
        for layer in self.mta_layers.values():
            layer.selector.set_trainable(True)

    # ------------------------------------------------------------ forward
    def _masks(self, kwargs: dict) -> dict[str, Tensor | None]:
        if self.family.encoder_decoder:
            return {"encoder": kwargs.get("attention_mask"), "decoder": kwargs.get("decoder_attention_mask")}
        stack = next(iter(self.family.stacks))
        return {stack: kwargs.get("attention_mask")}

    def route_ids(self, task_type_ids, task_ids) -> Tensor | None:
        """The ids the selectors key on: task-type ids, or task ids with ``mta.route_by: task``."""
        if self.mta_config.route_by == "task":
            if task_ids is None and task_type_ids is not None and self.mta_config.gate_mode != "learned":
                raise ValueError(
                    "task_ids: this model routes by task (mta.route_by 'task'); pass task_ids "
                    f"(positions in mta.tasks = {self.mta_config.tasks}), not task_type_ids"
                )
            ids = task_ids
        else:
            ids = task_type_ids
        if ids is None:
            return None
        ids = torch.as_tensor(ids).long().reshape(-1)
        check_route_id_range(ids, self.mta_config.route_by, self.mta_config.routing_keys)  # once, not per layer
        return ids

    def _begin(self, task_type_ids, task_ids, kwargs: dict) -> None:
        ctx = self._context
        ctx.route_ids = self.route_ids(task_type_ids, task_ids)
        ctx.masks = self._masks(kwargs)
        ctx.aux_losses = []

    def _end(self) -> None:
        """Forget the call's ids and masks, so a later direct call of the backbone cannot reuse them."""
        ctx = self._context
        ctx.route_ids, ctx.masks, ctx.routing_cache = None, {}, None

    # ------------------------------------------------------ gradient checkpointing
    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **options) -> None:
        """The backbone's activation (gradient) checkpointing, with each checkpointed block recomputed under the task
        ids and masks of the call that ran it (non-reentrant checkpoints; the ids are gone from the context by
        then). ``options`` (e.g. ``every_n_layers``) go to the backbone's method."""
        kwargs = dict(activation_checkpointing_kwargs or {})
        if kwargs.get("use_reentrant", False):
            raise ValueError(
                "activation_checkpointing_kwargs: use_reentrant=True cannot restore the task ids when a "
                "block is recomputed; MTAModel uses non-reentrant checkpoints"
            )
        kwargs.update(use_reentrant=False, context_fn=self._checkpoint_contexts)
        enable = getattr(self.base_model, "activation_checkpointing_enable", None)
        if enable is not None:  # transformers >= 5.23; the older name is deprecated there
            enable(activation_checkpointing_kwargs=kwargs, **options)
        else:
            self.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs, **options)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **options) -> None:
        """The older name of :meth:`activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **options)

    def _checkpoint_contexts(self):
        """(forward context, recompute context) for one checkpointed block: the second reinstates this call's ids."""
        saved = replace(self._context, masks=dict(self._context.masks), aux_losses=[])

        @contextlib.contextmanager
        def recompute():
            ctx = self._context
            before = (ctx.route_ids, ctx.masks, ctx.routing_cache, ctx.aux_losses, ctx.recomputing)
            ctx.route_ids, ctx.masks, ctx.routing_cache = saved.route_ids, saved.masks, saved.routing_cache
            ctx.aux_losses, ctx.recomputing = [], True
            try:
                yield
            finally:
                ctx.route_ids, ctx.masks, ctx.routing_cache, ctx.aux_losses, ctx.recomputing = before

        return contextlib.nullcontext(), recompute()

    def forward(self, *args, task_type_ids: Tensor | None = None, task_ids: Tensor | None = None, **kwargs):
        labels = kwargs.pop("labels", None) if self.task_heads is not None else None
        self._begin(task_type_ids, task_ids, kwargs)
        try:
            outputs = self.base_model(*args, **kwargs)
        finally:
            self._end()
        if self.task_heads is not None:
            outputs = self._classify(outputs, kwargs.get("attention_mask"), task_ids, labels)
        aux = torch.stack(self._context.aux_losses).sum() if self._context.aux_losses else None
        self.last_aux_loss = aux
        if aux is not None and getattr(outputs, "loss", None) is not None:
            outputs.loss = outputs.loss + aux.to(outputs.loss.dtype)
        return outputs

    def forward_batch(self, batch: dict[str, Tensor]):
        """The teacher-forced forward of a collated batch (``input_ids``, ``attention_mask``, ``labels``,
        ``task_type_ids``, ``task_ids``): its ``loss`` includes the routing aux loss (``last_aux_loss``)."""
        return self(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            task_type_ids=batch["task_type_ids"],
            task_ids=batch["task_ids"],
        )

    def _classify(self, outputs, attention_mask, task_ids, labels) -> SequenceClassifierOutput:
        pooled = pool(outputs.last_hidden_state, attention_mask, self.mta_config.pooling, outputs.pooler_output)
        logits = self.task_heads(pooled, task_ids)
        loss = None if labels is None else F.cross_entropy(logits.float(), torch.as_tensor(labels).reshape(-1))
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    # ------------------------------------------------------------- persistence
    def save_pretrained(self, directory) -> None:
        """Backbone config + MTA settings + safetensors weights (see :mod:`.persistence`)."""
        save_mta_model(self, directory)

    @classmethod
    def from_pretrained(cls, directory, ep_size: int | None = None, config: MTAConfig | None = None) -> "MTAModel":
        """A model saved with :meth:`save_pretrained`; ``ep_size`` > 1 keeps only this rank's adapters (needs a
        process group); ``config`` replaces the saved layer config (its weights must still fit)."""
        saved = read_saved_model(directory)
        mta = config if config is not None else saved.mta
        return cls.from_saved(saved, mta if ep_size is None else mta.replace(ep_size=ep_size))

    @classmethod
    def from_saved(
        cls,
        saved: SavedModel,
        mta: MTAConfig,
        state: dict | None = None,
        allow_missing: Callable[["MTAModel", str], bool] | None = None,
    ) -> "MTAModel":
        """The model for ``mta`` on ``saved``'s backbone and stage, with ``state`` (default: the saved weights)
        loaded; ``allow_missing`` names keys that may be absent (left at their initial values)."""
        model = cls(saved.model_cls(saved.base_config), mta)
        if saved.stage == 2:
            model.enable_stage2()
        return load_saved_state(model, saved, saved.state if state is None else state, allow_missing)

    @torch.no_grad()
    def generate(self, *args, task_type_ids: Tensor | None = None, task_ids: Tensor | None = None, **kwargs):
        """``base_model.generate`` with each sequence's routing decided at its first forward and reused."""
        if self.task_heads is not None:
            raise ValueError("generate: this model classifies with task heads (mta.task_heads); call it instead")
        self._begin(task_type_ids, task_ids, kwargs)
        self._context.routing_cache = {}
        try:
            return self.base_model.generate(*args, **kwargs)
        finally:
            self._end()
