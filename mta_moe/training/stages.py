"""What a run that starts from an export (stage 2, or adding task types) takes from the export and what from
its own ``mta`` section: keys that can still take effect apply; keys the export fixes must agree or the run
stops with an error that names the key."""

from __future__ import annotations

from typing import AbstractSet, Any

from ..config import ConfigError, MTAConfig

# take effect when a run continues from an export: they act in every forward, on the stage-2 parts that
# this run builds, or on how the run is laid out
APPLY_AT_RESTART = (
    "temperature",
    "gate_mode",
    "sequence_repr",
    "load_balance_coef",
    "z_loss_coef",
    "track_routing",
    "dispatch",
    "ep_size",
)
# the stage-2 parts: built by the first stage-2 run, so they apply when the export is a stage-1 model
STAGE2_PARTS = ("num_shared_adapters", "shared_adapter_dim", "gate_network_hidden", "stage2_form", "init_seed")
# everything else (adapters, routing keys, placement, the Softmax-T initialisation) was fixed by the export


def restart_config(
    saved: MTAConfig,
    saved_stage: int,
    requested: MTAConfig,
    explicit: AbstractSet[str],
    source: str,
    growing: bool = False,
) -> MTAConfig:
    """The layer config of a run that starts from the export at ``source``: the export's, with the keys set in
    this run's ``mta`` section (``explicit``) applied where they can take effect. A key set to a value the export
    cannot take raises :class:`ConfigError` naming it. ``growing``: the run adds task types (their keys are
    checked by the growth itself)."""
    changes: dict[str, Any] = {}
    for key in sorted(explicit):
        wanted, have = getattr(requested, key), getattr(saved, key)
        if key in APPLY_AT_RESTART or (key in STAGE2_PARTS and saved_stage == 1):
            changes[key] = wanted
            continue
        if wanted == have or (growing and key in ("task_types", "tasks")) or (key == "tasks" and wanted is None):
            continue
        if key in STAGE2_PARTS:
            reason = f"the export at {source} is already a stage-2 model whose stage-2 parts were built with {have!r}"
        else:
            reason = f"the export at {source} was trained with {have!r}, and a run that starts from it keeps it"
        raise ConfigError(f"mta.{key}: {wanted!r} is set here but {reason}; remove the key or set it to {have!r}")
    return saved.replace(**changes) if changes else saved
