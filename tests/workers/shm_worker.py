"""Runs under torchrun with LOCAL_SIZE set (as the deepspeed launcher sets it): DeepSpeed's CPU shared-memory
allreduce starts; each rank records whether every rank's segment exists after init_distributed and after
release_shm_segment, and the result of an allreduce through the shared memory after the names are gone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import deepspeed.comm as ds_comm
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mta_moe.training.distributed import barrier, release_shm_segment, shm_segment  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    deepspeed.init_distributed(auto_mpi_discovery=False)
    rank, world = dist.get_rank(), dist.get_world_size()
    before = [shm_segment(r).exists() for r in range(world)]
    released = release_shm_segment()
    barrier()
    after = [shm_segment(r).exists() for r in range(world)]
    level = getattr(ds_comm.comm.cdb, "shm_vector_kernel_level", 0)
    total = ds_comm.inference_all_reduce(torch.full((1024,), float(rank + 1)))
    record = {"before": before, "released": released, "after": after, "level": level, "sum": sorted(set(total.tolist()))}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
