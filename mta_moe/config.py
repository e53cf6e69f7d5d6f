"""MTA settings: one validated object for the layer, read from the ``"mta"`` section of a DeepSpeed JSON."""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Annotated, Any, Literal, Mapping

from pydantic import Field, field_validator

from .names import name_problem
from .typed_config import (
    ConfigError,
    build_section,
    check_int,
    check_section,
    reject_nonfinite,
    reject_unknown_keys,
    setting,
    typed_section,
)

EXPERT_KINDS = ("bottleneck", "ffn")
GATE_MODES = ("task", "learned", "both")
SEQUENCE_REPRS = ("first", "mean")
ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu", "tanh")
DEFAULT_TASK_TYPES = ("classify", "nli", "generate")
INJECT_STACKS = ("encoder", "decoder", "both")
DISPATCH_MODES = ("grouped", "deepspeed", "gathered_weights", "grouped_gemm", "loop")
FIXED_SHAPE_DISPATCH = ("gathered_weights", "grouped_gemm")
ROUTE_BY = ("type", "task")
STAGE2_FORMS = ("residual", "official")
POOLINGS = ("pooler", "cls", "mean")
# the official ALTER Softmax-T rows for 5 adapters and (classify, nli, generate): overlapping pairs
OFFICIAL_ASSIGNMENT = {"classify": [0, 1], "nli": [1, 2], "generate": [3, 4]}
RUN_SECTIONS = ("model", "data", "train")
_Name = Annotated[str, Field(min_length=1)]
__all__ = ["ConfigError", "MTAConfig", "check_int", "reject_nonfinite", "reject_unknown_keys", "sharing_adapters"]


@typed_section("mta")
class MTAConfig:
    """Settings of the Mixture-of-Task-Adapters layer.

    Defaults reproduce the official ALTER setup: 5 adapters, 3 task types, dense mixture,
    Softmax-T with T = 0.1 and task biases 0.22 (assigned) vs 0.20 (others). Each field's type, bounds and
    description live on it (``docs/configuration.md`` is generated from them).

    Args:
        num_experts: task adapters (MoE experts) per layer.
        k: adapters per sequence; None: all (the dense mixture).
        expert_kind: ``bottleneck`` (adapter beside the FFN) or ``ffn`` (a copy of the FFN per expert).
        adapter_dim: bottleneck width. Every other field is described on the field.

    Build one from a config file's ``mta`` section with :meth:`from_dict`; construction checks every field and
    raises :class:`ConfigError` naming the first bad key (unknown keys with a suggestion); :meth:`replace` returns
    a checked copy with some fields changed.
    """

    num_experts: int = setting(5, "task adapters (MoE experts) per layer", ge=1)
    k: int | None = setting(None, "adapters per sequence; `null` = all (dense mixture)", ge=1)
    expert_kind: Literal[EXPERT_KINDS] = setting(  # type: ignore[valid-type]
        "bottleneck", "`bottleneck` (an adapter beside the FFN) or `ffn` (a copy of the FFN per expert)"
    )
    adapter_dim: int = setting(64, "bottleneck width of a task adapter", ge=1)
    adapter_activation: Literal[ACTIVATIONS] = setting(  # type: ignore[valid-type]
        "relu", "activation inside the adapters"
    )
    adapter_bias: bool = setting(
        True,
        "bias vectors in the adapters (task and shared); `false` lets a T5 model fold "
        "into a stock T5 per task (`mta-moe export`)",
    )
    ep_size: int = setting(1, "expert-parallel size; must divide `num_experts` and the world size", ge=1)
    task_types: list[_Name] = setting(
        list(DEFAULT_TASK_TYPES),
        "task type names, unique; ids are their positions",
        min_length=1,
        must="a non-empty list of non-empty names",
        item_must="a non-empty name",
    )
    route_by: Literal[ROUTE_BY] = setting(  # type: ignore[valid-type]
        "type", "what the selector keeps a bias row for: `type` (the paper) or `task`"
    )
    tasks: list[_Name] | None = setting(
        None,
        "task names in task-id order (the routing keys with `route_by: task`); `null`: the training data's, sorted",
        min_length=1,
        must="a non-empty list of unique task names or null",
        item_must="a non-empty task name",
    )
    task_adapter_assignment: Any = setting(
        None,
        '`{routing key: [adapter ids]}`; `null` = contiguous split; `"official"` = the official code\'s '
        "overlapping rows (classify [0, 1], nli [1, 2], generate [3, 4]; 5 adapters, the three default types)",
        must="an object {routing key: [adapter ids]}, 'official' or null",
    )
    gate_mode: Literal[GATE_MODES] = setting(  # type: ignore[valid-type]
        "task", "`task` (the Task Weight Selector), `learned` (a gate on the hidden states) or `both`"
    )
    temperature: float = setting(0.1, "Softmax-T temperature", gt=0)
    bias_init: float = setting(0.20, "Softmax-T initial task bias of the adapters a routing key does not favour")
    bias_margin: float = setting(0.02, "how much higher the favoured adapters' initial biases are")
    selector_init_std: float = setting(0.0, "std of the selector's W at init (0: zeros)", ge=0)
    sequence_repr: Literal[SEQUENCE_REPRS] = setting(  # type: ignore[valid-type]
        "first", "the sequence's representation a learned gate reads: `first` token or `mean`"
    )
    load_balance_coef: float = setting(0.0, "load-balancing aux-loss coefficient (returned as `l_aux`)", ge=0)
    z_loss_coef: float = setting(0.0, "router z-loss coefficient (returned as `l_aux`)", ge=0)
    always_on_adapters: int = setting(
        0,
        "adapters every sequence uses beside its task adapters, from stage 1 on, mixed with the task mixture per "
        "routing key by learned weights that start at 1 (bottleneck experts only)",
        ge=0,
    )
    always_on_dim: int | None = setting(None, "width of the always-on adapters; `null`: `adapter_dim`", ge=1)
    num_shared_adapters: int = setting(1, "stage-2 shared adapters", ge=0)
    shared_adapter_dim: int = setting(64, "stage-2 shared adapter width", ge=1)
    gate_network_hidden: int | None = setting(None, "stage-2 gate network width; `null` = hidden size", ge=1)
    stage2_form: Literal[STAGE2_FORMS] = setting(  # type: ignore[valid-type]
        "residual",
        "stage-2 output: `residual` `M + Σ g_j A_j(x)` (exact at the switch) or `official` "
        "`g_0·M + Σ g_j (FFN(x) + A_j(x))`",
    )
    task_heads: dict[_Name, Annotated[list[_Name], Field(min_length=2)]] | None = setting(
        None,
        "encoder backbones (bert, roberta): one classification head per task, its labels in head order "
        "(the trainer fills it from the training data); `null` for text-to-text backbones",
    )
    pooling: Literal[POOLINGS] = setting(  # type: ignore[valid-type]
        "pooler",
        "encoder backbones: what a task head reads, `pooler` (the backbone's pooler on the first token, as "
        "BertForSequenceClassification), `cls` (the first token) or `mean` (the mean over real tokens)",
    )
    init_seed: int = setting(0, "seed of the adapter initialisation", ge=0)
    track_routing: bool = setting(True, "accumulate routing statistics")
    inject_layers: Any = setting(
        "last:1",
        "blocks to inject into: `all`, `last:N` or a list of block indices",
        must="'all', 'last:N' (N >= 1) or a non-empty list of block indices",
    )
    inject_stacks: Literal[INJECT_STACKS] = setting(  # type: ignore[valid-type]
        "both", "`encoder`, `decoder` or `both` (every stack the model has)"
    )
    dispatch: Literal[DISPATCH_MODES] = setting(  # type: ignore[valid-type]
        "grouped",
        "`grouped`: whole sequences per adapter, exact split sizes across ranks, the computation chosen "
        "per call (*Dispatch*); `gathered_weights` / `grouped_gemm` / `loop`: that computation always "
        "(the first two: bottleneck adapters, `ep_size` 1); `deepspeed`: DeepSpeed's stock index "
        "dispatch (padded to E × max load)",
    )

    @field_validator("task_types", "tasks", mode="before")
    @classmethod
    def _tuples_are_lists(cls, value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    @field_validator("inject_layers")
    @classmethod
    def _inject_layers_form(cls, spec: Any) -> Any:
        if (
            spec == "all"
            or isinstance(spec, str)
            and spec.startswith("last:")
            and spec[5:].isdigit()
            and int(spec[5:]) >= 1
        ):
            return spec
        if isinstance(spec, list) and spec and all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
            return spec
        raise ValueError(f"must be 'all', 'last:N' (N >= 1) or a non-empty list of block indices, got {spec!r}")

    def __post_init__(self) -> None:
        """The checks between fields (each field's own type and bounds are checked before)."""
        if self.k is not None and self.k > self.num_experts:
            raise ConfigError(f"mta.k: must be between 1 and num_experts ({self.num_experts}), got {self.k}")
        if self.num_experts % self.ep_size != 0:
            raise ConfigError(
                f"mta.ep_size: num_experts ({self.num_experts}) must be divisible by ep_size, "
                f"got ep_size={self.ep_size}"
            )
        heads = list(self.task_heads or {})
        if self.task_heads is not None and self.route_by == "task" and self.tasks is not None and heads != self.tasks:
            raise ConfigError(
                f"mta.task_heads: must name the tasks of mta.tasks in their order {self.tasks}, got {heads}"
            )
        for task, labels in (self.task_heads or {}).items():
            if len(set(labels)) != len(labels):
                raise ConfigError(f"mta.task_heads.{task}: labels must be unique, got {labels!r}")
        for key, names in (("task_types", self.task_types), ("tasks", self.tasks or []), ("task_heads", heads)):
            if len(set(names)) != len(names):
                raise ConfigError(f"mta.{key}: names must be unique, got {names!r}")
            problem = next((name_problem(n) for n in names if name_problem(n)), None)
            if problem is not None:
                raise ConfigError(f"mta.{key}: {problem}")
        self._validate_assignment()
        if self.always_on_adapters and self.expert_kind != "bottleneck":
            raise ConfigError(
                "mta.always_on_adapters: always-on adapters sit beside bottleneck task adapters; "
                f"expert_kind {self.expert_kind!r} replaces the FFN (use 0, or expert_kind 'bottleneck')"
            )
        if self.dispatch in FIXED_SHAPE_DISPATCH and (self.expert_kind != "bottleneck" or self.ep_size != 1):
            raise ConfigError(
                f"mta.dispatch: {self.dispatch!r} runs bottleneck adapters at ep_size 1 only "
                f"(got expert_kind {self.expert_kind!r}, ep_size {self.ep_size}); use 'grouped'"
            )
        if self.stage2_form == "official" and self.expert_kind != "bottleneck":
            raise ConfigError(
                "mta.stage2_form: 'official' mixes the task mixture with shared candidates "
                "FFN(x) + A_j(x), which needs expert_kind 'bottleneck' (the ffn kind keeps no base FFN)"
            )

    # ----------------------------------------------------------------- derived
    @property
    def num_task_types(self) -> int:
        return len(self.task_types)

    @property
    def routing_keys(self) -> list[str]:
        """The names the selector keeps one bias row for: task types, or tasks with ``route_by: task``."""
        if self.route_by == "type":
            return list(self.task_types)
        if self.tasks is None:
            raise ConfigError(
                "mta.tasks: route_by 'task' needs the task names (the trainer fills them from the "
                "training data; set them when building a model by hand)"
            )
        return list(self.tasks)

    @property
    def num_routes(self) -> int:
        return len(self.routing_keys)

    @property
    def top_k(self) -> int:
        """Number of adapters each sequence uses (``k``, or all of them when ``k`` is None)."""
        return self.num_experts if self.k is None else self.k

    def assignment(self) -> list[list[int]]:
        """Adapters favoured by each routing key (task type or task), in id order."""
        keys = self.routing_keys
        table = self.task_adapter_assignment
        if table == "official":
            table = OFFICIAL_ASSIGNMENT
        if table is not None:
            return [list(table[name]) for name in keys]
        n, t = self.num_experts, len(keys)
        base, extra = divmod(n, t)
        if base == 0:  # fewer adapters than task types: task type i favours adapter i mod E
            return [[i % n] for i in range(t)]
        out, start = [], 0
        for i in range(t):
            size = base + (1 if i < extra else 0)
            out.append(list(range(start, start + size)))
            start += size
        return out

    # -------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check the fields again (after some were set by hand); raise :class:`ConfigError` naming the first bad
        key."""
        check_section(self)

    def _validate_assignment(self) -> None:
        table = self.task_adapter_assignment
        if table is None:
            return
        key = "mta.task_adapter_assignment"
        what = "task type" if self.route_by == "type" else "task"
        if table == "official":
            if self.route_by != "type" or self.task_types != list(DEFAULT_TASK_TYPES) or self.num_experts != 5:
                raise ConfigError(
                    f"{key}: 'official' is the official code's table for route_by 'type', 5 adapters "
                    f"and task_types {list(DEFAULT_TASK_TYPES)}; got route_by {self.route_by!r}, "
                    f"{self.num_experts} adapters, task_types {self.task_types}"
                )
            return
        if not isinstance(table, Mapping):
            raise ConfigError(
                f"{key}: must map each {what} name to a list of adapter ids, or be 'official'; got {table!r}"
            )
        if self.route_by == "task" and self.tasks is None:
            known = None  # checked once the task names are known
        else:
            known = self.routing_keys
        if known is not None:
            unknown = sorted(set(table) - set(known))
            if unknown:
                raise ConfigError(f"{key}: unknown {what}(s) {unknown}; the {what}s are {known}")
            missing = [t for t in known if t not in table]
            if missing:
                raise ConfigError(f"{key}: no adapters given for {what}(s) {missing}")
        for name, ids in table.items():
            if (
                not isinstance(ids, (list, tuple))
                or not ids
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
            ):
                raise ConfigError(f"{key}.{name}: must be a non-empty list of adapter ids, got {ids!r}")
            bad = [i for i in ids if not 0 <= i < self.num_experts]
            if bad:
                raise ConfigError(f"{key}.{name}: adapter ids must be in [0, {self.num_experts - 1}], got {bad}")

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], section: str = "mta") -> "MTAConfig":
        """Build from a mapping; unknown keys are rejected by name."""
        return build_section(cls, values, section)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "MTAConfig":
        """A validated copy with some values changed."""
        return MTAConfig.from_dict({**self.to_dict(), **changes})


def sharing_adapters(config: MTAConfig) -> dict[int, list[str]]:
    """Adapters that more than one routing key starts out favouring, when there are more keys than adapters and no
    explicit assignment: ``{adapter: [keys]}`` (empty otherwise)."""
    if config.task_adapter_assignment is not None or config.route_by == "task" and config.tasks is None:
        return {}
    if config.num_routes <= config.num_experts:
        return {}
    owners: dict[int, list[str]] = {}
    for key, adapters in zip(config.routing_keys, config.assignment()):
        for adapter in adapters:
            owners.setdefault(adapter, []).append(key)
    return {a: keys for a, keys in sorted(owners.items()) if len(keys) > 1}


def positive_int(text: str) -> int:
    """argparse ``type`` for a count option: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse ``type`` for a float option: NaN and ±Infinity are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value
