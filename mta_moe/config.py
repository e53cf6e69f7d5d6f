"""MTA settings: one validated object for the layer, read from the ``"mta"`` section of a DeepSpeed JSON."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .names import name_problem

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
# the official ALTER Softmax-T rows for 5 adapters and (classify, nli, generate): overlapping pairs
OFFICIAL_ASSIGNMENT = {"classify": [0, 1], "nli": [1, 2], "generate": [3, 4]}
RUN_SECTIONS = ("model", "data", "train")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and what is allowed."""


@dataclass
class MTAConfig:
    """Settings of the Mixture-of-Task-Adapters layer.

    Defaults reproduce the official ALTER setup: 5 adapters, 3 task types, dense mixture,
    Softmax-T with T = 0.1 and task biases 0.22 (assigned) vs 0.20 (others).

    Args:
        num_experts: task adapters (MoE experts) per layer.
        k: adapters per sequence; None: all (the dense mixture).
        expert_kind: ``bottleneck`` (adapter beside the FFN) or ``ffn`` (a copy of the FFN per expert).
        adapter_dim: bottleneck width. Every other field is described in docs/configuration.md.

    Build one from a config file's ``mta`` section with :meth:`from_dict` (unknown keys and bad values raise
    :class:`ConfigError` naming the key); :meth:`replace` returns a checked copy with some fields changed.
    """

    num_experts: int = 5
    k: int | None = None  # None: all experts (the dense mixture)
    expert_kind: str = "bottleneck"
    adapter_dim: int = 64
    adapter_activation: str = "relu"
    # bias vectors in the adapters' projections; false makes a task's mixture fold exactly into a bias-free FFN (T5)
    adapter_bias: bool = True
    ep_size: int = 1
    task_types: list[str] = field(default_factory=lambda: list(DEFAULT_TASK_TYPES))
    # what the selector keys its bias rows on: the task type (the paper) or the task name
    route_by: str = "type"
    # task names, in task-id order; the routing keys when route_by is "task" (the trainer fills them from the data)
    tasks: list[str] | None = None
    # routing key (task type, or task with route_by "task") -> adapters it starts out favouring;
    # None: contiguous split of the adapters; "official": the official code's overlapping rows (5 adapters, 3 types)
    task_adapter_assignment: dict[str, list[int]] | str | None = None
    gate_mode: str = "task"
    temperature: float = 0.1
    bias_init: float = 0.20
    bias_margin: float = 0.02
    selector_init_std: float = 0.0
    sequence_repr: str = "first"
    load_balance_coef: float = 0.0
    z_loss_coef: float = 0.0
    # adapters every sequence uses beside its routed task adapters, from stage 1 on (0: none), mixed with the task
    # mixture per routing key by learned weights that all start at 1 (modeling.always_on)
    always_on_adapters: int = 0
    always_on_dim: int | None = None  # None: adapter_dim
    num_shared_adapters: int = 1
    shared_adapter_dim: int = 64
    gate_network_hidden: int | None = None  # None: the model's hidden size
    # stage-2 output: "residual" M + Σ g_j·A_j(x) (exact at the switch) or "official" g_0·M + Σ g_j·Shared_j(x)
    stage2_form: str = "residual"
    init_seed: int = 0
    track_routing: bool = True
    # where to inject into a backbone: "all", "last:N" or block indices; which stacks ("both" = every stack)
    inject_layers: str | list[int] = "last:1"
    inject_stacks: str = "both"
    # "grouped": whole sequences per adapter, exact split sizes, the form chosen per call (dispatch.choose_form);
    # "gathered_weights" / "grouped_gemm" / "loop": that form always; "deepspeed": DeepSpeed's stock index dispatch
    dispatch: str = "grouped"

    def __post_init__(self) -> None:
        self.task_types = list(self.task_types)
        if self.tasks is not None and isinstance(self.tasks, (list, tuple)):
            self.tasks = list(self.tasks)
        self.validate()

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
            raise ConfigError("mta.tasks: route_by 'task' needs the task names (the trainer fills them from the "
                              "training data; set them when building a model by hand)")
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
        """Raise :class:`ConfigError` naming the first invalid key."""
        _int(self.num_experts, "num_experts", minimum=1)
        if self.k is not None:
            _int(self.k, "k", minimum=1)
            if self.k > self.num_experts:
                raise ConfigError(f"mta.k: must be between 1 and num_experts ({self.num_experts}), got {self.k}")
        _choice(self.expert_kind, "expert_kind", EXPERT_KINDS)
        _int(self.adapter_dim, "adapter_dim", minimum=1)
        _choice(self.adapter_activation, "adapter_activation", ACTIVATIONS)
        if not isinstance(self.adapter_bias, bool):
            raise ConfigError(f"mta.adapter_bias: must be true or false, got {self.adapter_bias!r}")
        _int(self.ep_size, "ep_size", minimum=1)
        if self.num_experts % self.ep_size != 0:
            raise ConfigError(f"mta.ep_size: num_experts ({self.num_experts}) must be divisible by ep_size, "
                              f"got ep_size={self.ep_size}")
        if not self.task_types or not all(isinstance(t, str) and t for t in self.task_types):
            raise ConfigError(f"mta.task_types: must be a non-empty list of non-empty names, got {self.task_types!r}")
        if len(set(self.task_types)) != len(self.task_types):
            raise ConfigError(f"mta.task_types: names must be unique, got {self.task_types!r}")
        for key, names in (("task_types", self.task_types), ("tasks", self.tasks or [])):
            problem = next((name_problem(n) for n in names if name_problem(n)), None)
            if problem is not None:
                raise ConfigError(f"mta.{key}: {problem}")
        _choice(self.route_by, "route_by", ROUTE_BY)
        if self.tasks is not None and (not isinstance(self.tasks, list) or not self.tasks
                                       or not all(isinstance(t, str) and t for t in self.tasks)
                                       or len(set(self.tasks)) != len(self.tasks)):
            raise ConfigError(f"mta.tasks: must be a non-empty list of unique task names or null, got {self.tasks!r}")
        self._validate_assignment()
        _choice(self.gate_mode, "gate_mode", GATE_MODES)
        _number(self.temperature, "temperature")
        if self.temperature <= 0:
            raise ConfigError(f"mta.temperature: must be > 0, got {self.temperature}")
        _number(self.bias_init, "bias_init")
        _number(self.bias_margin, "bias_margin")
        _number(self.selector_init_std, "selector_init_std")
        if self.selector_init_std < 0:
            raise ConfigError(f"mta.selector_init_std: must be >= 0, got {self.selector_init_std}")
        _choice(self.sequence_repr, "sequence_repr", SEQUENCE_REPRS)
        for key in ("load_balance_coef", "z_loss_coef"):
            _number(getattr(self, key), key)
            if getattr(self, key) < 0:
                raise ConfigError(f"mta.{key}: must be >= 0, got {getattr(self, key)}")
        _int(self.always_on_adapters, "always_on_adapters", minimum=0)
        if self.always_on_dim is not None:
            _int(self.always_on_dim, "always_on_dim", minimum=1)
        if self.always_on_adapters and self.expert_kind != "bottleneck":
            raise ConfigError("mta.always_on_adapters: always-on adapters sit beside bottleneck task adapters; "
                              f"expert_kind {self.expert_kind!r} replaces the FFN (use 0, or expert_kind 'bottleneck')")
        _int(self.num_shared_adapters, "num_shared_adapters", minimum=0)
        _int(self.shared_adapter_dim, "shared_adapter_dim", minimum=1)
        if self.gate_network_hidden is not None:
            _int(self.gate_network_hidden, "gate_network_hidden", minimum=1)
        _int(self.init_seed, "init_seed", minimum=0)
        if not isinstance(self.track_routing, bool):
            raise ConfigError(f"mta.track_routing: must be true or false, got {self.track_routing!r}")
        self._validate_inject_layers()
        _choice(self.inject_stacks, "inject_stacks", INJECT_STACKS)
        _choice(self.dispatch, "dispatch", DISPATCH_MODES)
        if self.dispatch in FIXED_SHAPE_DISPATCH and (self.expert_kind != "bottleneck" or self.ep_size != 1):
            raise ConfigError(f"mta.dispatch: {self.dispatch!r} runs bottleneck adapters at ep_size 1 only "
                              f"(got expert_kind {self.expert_kind!r}, ep_size {self.ep_size}); use 'grouped'")
        _choice(self.stage2_form, "stage2_form", STAGE2_FORMS)
        if self.stage2_form == "official" and self.expert_kind != "bottleneck":
            raise ConfigError("mta.stage2_form: 'official' mixes the task mixture with shared candidates "
                              "FFN(x) + A_j(x), which needs expert_kind 'bottleneck' (the ffn kind keeps no base FFN)")

    def _validate_inject_layers(self) -> None:
        spec = self.inject_layers
        if spec == "all":
            return
        if isinstance(spec, str) and spec.startswith("last:"):
            n = spec.split(":", 1)[1]
            if n.isdigit() and int(n) >= 1:
                return
        if (isinstance(spec, list) and spec
                and all(isinstance(i, int) and not isinstance(i, bool) for i in spec)):
            return
        raise ConfigError(f"mta.inject_layers: must be 'all', 'last:N' (N >= 1) or a non-empty list of block "
                          f"indices, got {spec!r}")

    def _validate_assignment(self) -> None:
        table = self.task_adapter_assignment
        if table is None:
            return
        key = "mta.task_adapter_assignment"
        what = "task type" if self.route_by == "type" else "task"
        if table == "official":
            if self.route_by != "type" or self.task_types != list(DEFAULT_TASK_TYPES) or self.num_experts != 5:
                raise ConfigError(f"{key}: 'official' is the official code's table for route_by 'type', 5 adapters "
                                  f"and task_types {list(DEFAULT_TASK_TYPES)}; got route_by {self.route_by!r}, "
                                  f"{self.num_experts} adapters, task_types {self.task_types}")
            return
        if not isinstance(table, Mapping):
            raise ConfigError(f"{key}: must map each {what} name to a list of adapter ids, or be 'official'; "
                              f"got {table!r}")
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
            if (not isinstance(ids, (list, tuple)) or not ids
                    or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
                raise ConfigError(f"{key}.{name}: must be a non-empty list of adapter ids, got {ids!r}")
            bad = [i for i in ids if not 0 <= i < self.num_experts]
            if bad:
                raise ConfigError(f"{key}.{name}: adapter ids must be in [0, {self.num_experts - 1}], got {bad}")

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], section: str = "mta") -> "MTAConfig":
        """Build from a mapping; unknown keys are rejected by name."""
        reject_unknown_keys(values, [f.name for f in dataclasses.fields(cls)], section)
        return cls(**dict(values))

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


def reject_unknown_keys(values: Any, allowed: list[str], section: str) -> None:
    """``values`` must be a mapping whose keys are all in ``allowed``; errors name ``section.key``."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section}: must be a JSON object, got {values!r}")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(allowed), n=1, cutoff=0.7)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{section}.{unknown[0]}: unknown key{hint}; allowed keys are {sorted(allowed)}")


def check_int(value: Any, key: str, minimum: int) -> None:
    """``value`` must be an integer (not a bool) >= ``minimum``; the error names the full ``key``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key}: must be an integer >= {minimum}, got {value!r}")


def _int(value: Any, key: str, minimum: int) -> None:
    check_int(value, f"mta.{key}", minimum)


def _number(value: Any, key: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"mta.{key}: must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"mta.{key}: must be a finite number, got {value!r}")


def reject_nonfinite(node: Any, prefix: str = "") -> None:
    """Refuse NaN and ±Infinity anywhere in a config (JSON files and overrides may spell them), naming the key:
    every range check after this one compares finite numbers."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            reject_nonfinite(value, f"{prefix}{key}.")
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            reject_nonfinite(value, f"{prefix[:-1]}[{index}].")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{prefix[:-1]}: {node!r} is not a finite number; every number in a config must be finite")


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


def _choice(value: Any, key: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"mta.{key}: must be one of {list(allowed)}, got {value!r}")
