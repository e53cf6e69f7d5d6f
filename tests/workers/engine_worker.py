"""Runs under torchrun: DeepSpeed-engine scenarios for the MTA layer; each rank writes <out>/rank<R>.json."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mta_moe import MTAConfig, load_ds_config  # noqa: E402
from mta_moe.training import optimizer_param_groups  # noqa: E402
from workers.toy_model import ToyMTAModel, make_batch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def build_engine(cfg: MTAConfig, zero_stage: int | None, lr: float = 1e-2, seed: int = 0, ds_config=None):
    """Toy MTA model in a DeepSpeed engine with a torch AdamW client optimizer (no fused-Adam JIT build)."""
    torch.manual_seed(seed)
    model = ToyMTAModel(cfg)
    opt = torch.optim.AdamW(optimizer_param_groups(model, lr=lr), lr=lr, weight_decay=0.0)
    if ds_config is None:
        ds_config = {
            "train_micro_batch_size_per_gpu": 8,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": zero_stage},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)
    return engine


def train_steps(engine, steps: int, batch_fn) -> list[float]:
    losses = []
    for step in range(steps):
        ids, tasks = batch_fn(step)
        loss = engine(ids, tasks)
        engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / dist.get_world_size())
    return losses


def zero2_updates() -> dict:
    """Shipped stage-1 config (ZeRO-2), one step then another: which parameters moved.

    Guards DeepSpeed's known 'gate not updated under ZeRO-2' failure.
    """
    ds_config, mta = load_ds_config(REPO / "ds_configs" / "stage1.json")
    assert ds_config["zero_optimization"]["stage"] == 2
    cfg = mta.replace(num_experts=4, k=2, gate_mode="both", adapter_dim=8, task_types=["a", "b", "c"], tasks=["a", "b", "c"])
    engine = build_engine(cfg, zero_stage=None, ds_config=ds_config)
    before = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    changed = {}
    for step in range(2):
        train_steps(engine, 1, lambda s: make_batch(100 + step))
        for n, p in engine.module.named_parameters():
            changed.setdefault(n, []).append(bool(not torch.equal(before[n], p.detach())))
    return {"changed": changed, "trainable": [n for n, p in engine.module.named_parameters() if p.requires_grad]}


def ep_equivalence() -> dict:
    """Mean loss per step for ZeRO 1/2 × ep_size 1/2; each rank trains on its own batches."""
    rank = dist.get_rank()
    out = {}
    for zero_stage in (1, 2):
        for ep in (1, 2):
            cfg = MTAConfig(num_experts=4, k=2, ep_size=ep, gate_mode="both", adapter_dim=8, task_types=["a", "b", "c"], load_balance_coef=0.01)
            engine = build_engine(cfg, zero_stage)
            out[f"zero{zero_stage}_ep{ep}"] = train_steps(engine, 4, lambda s: make_batch(1000 * s + rank))
            out[f"layout_ep{ep}"] = engine.module.mta.global_expert_ids()
    # DeepSpeed's stock dispatch (padding to E × max load) on the same ep-2 run, for comparison
    cfg = cfg.replace(ep_size=2, dispatch="deepspeed")
    out["zero2_ep2_deepspeed"] = train_steps(build_engine(cfg, 2), 4, lambda s: make_batch(1000 * s + rank))
    return out


def empty_expert(dispatch: str = "grouped") -> dict:
    """ep_size 2, k 1: rank 0 sends every sequence to adapter 0, rank 1 to adapter 1; adapters 2, 3 get none."""
    rank = dist.get_rank()
    cfg = MTAConfig(num_experts=4, k=1, ep_size=2, gate_mode="task", adapter_dim=8, task_types=["t0", "t1", "t2", "t3"], dispatch=dispatch)

    def batch(step):
        ids, _ = make_batch(10 * step + rank)
        return ids, torch.full((ids.size(0),), rank, dtype=torch.long)

    engine = build_engine(cfg, zero_stage=2)
    losses = train_steps(engine, 3, batch)
    stats = engine.module.mta.get_routing_stats(all_reduce=True).as_dict()
    local = engine.module.mta.get_routing_stats().as_dict()
    return {"losses": losses, "stats_all_reduced": stats, "stats_local": local}


def long_unbalanced(steps: int = 60) -> dict:
    """ep_size 1 and 2 over ``steps`` steps where every batch (on both ranks) is one task type, alternating
    between types 0 and 1: adapters 2 and 3 get no sequence in the whole run."""
    rank = dist.get_rank()
    out = {}
    for ep in (1, 2):
        cfg = MTAConfig(num_experts=4, k=1, ep_size=ep, gate_mode="task", adapter_dim=8, task_types=["t0", "t1", "t2", "t3"])

        def batch(step):
            ids, _ = make_batch(1000 * step + rank)
            return ids, torch.full((ids.size(0),), step % 2, dtype=torch.long)

        engine = build_engine(cfg, zero_stage=2)
        out[f"ep{ep}"] = train_steps(engine, steps, batch)
        out[f"counts_ep{ep}"] = engine.module.mta.get_routing_stats(all_reduce=True).as_dict()["adapter_counts"]
    return out


SCENARIOS = {
    "zero2_updates": zero2_updates,
    "long_unbalanced": long_unbalanced,
    "ep_equivalence": ep_equivalence,
    "empty_expert": empty_expert,
    "empty_expert_deepspeed": lambda: empty_expert("deepspeed"),
}

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    deepspeed.init_distributed(dist_backend="gloo")
    result = SCENARIOS[args.scenario]()
    (args.out / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()
