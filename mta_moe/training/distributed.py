"""Process-group setup for every launch path: deepspeed, torchrun, SLURM (srun) and plain python."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import MutableMapping

import deepspeed
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

from .op_build import warn_stale_build_locks

SHM_DIR = Path("/dev/shm")  # where shm_open's names live on Linux


def slurm_to_torch_env(env: MutableMapping[str, str]) -> dict[str, str]:
    """The torch.distributed variables derived from SLURM's (DeepSpeed 0.19.8 does not read SLURM_PROCID).

    Returns the variables that were set; existing RANK / WORLD_SIZE / LOCAL_RANK are kept. MASTER_ADDR
    must come from the batch script (the first host of the allocation) when more than one node runs.
    """
    if "SLURM_PROCID" not in env or "RANK" in env:
        return {}
    derived = {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env.get("SLURM_NTASKS", "1"),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
    }
    nodes = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))
    if "MASTER_ADDR" not in env:
        if nodes > 1:
            raise RuntimeError(
                "SLURM run on several nodes without MASTER_ADDR: export it in the batch script "
                "(the first host of `scontrol show hostnames $SLURM_JOB_NODELIST`)"
            )
        derived["MASTER_ADDR"] = "127.0.0.1"
    if "MASTER_PORT" not in env:
        derived["MASTER_PORT"] = str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    env.update(derived)
    return derived


def init_process_group(timeout_s: float | None = None) -> tuple[int, int]:
    """Join (or, for a plain ``python`` run, create) the default process group; returns (rank, world size).
    ``timeout_s``: how long a collective waits for a rank that stopped answering before it fails."""
    slurm_to_torch_env(os.environ)
    if "RANK" not in os.environ:  # plain `python launchers/train.py`: a group of one
        os.environ.update(
            {
                "RANK": "0",
                "WORLD_SIZE": "1",
                "LOCAL_RANK": "0",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(_free_port()),
            }
        )
    if not dist.is_initialized():
        kwargs = {}
        if timeout_s is not None:
            kwargs["timeout"] = timedelta(seconds=timeout_s)
            # DeepSpeed creates its expert and data-parallel subgroups with new_group() and no timeout, which then
            # takes torch's module default (30 min): the configured timeout has to be that default too
            c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = kwargs["timeout"]
        warn_stale_build_locks()  # DeepSpeed builds its ops here and would wait on a dead build's lock forever
        deepspeed.init_distributed(auto_mpi_discovery=False, **kwargs)
        release_shm_segment()
    return dist.get_rank(), dist.get_world_size()


def shm_segment(rank: int) -> Path:
    """The shared-memory file DeepSpeed's CPU allreduce creates for ``rank`` of the group at MASTER_ADDR:MASTER_PORT."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return SHM_DIR / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"


def release_shm_segment() -> bool:
    """Unlink this rank's DeepSpeed CPU allreduce segment once every rank has mapped it; returns whether there was one.

    With the ``deepspeed`` launcher on one host (it sets LOCAL_SIZE), DeepSpeed 0.19.8's CPU accelerator gives each
    rank a ~66 MB segment in /dev/shm and never unlinks it: every run, finished or killed, left its segments in memory
    until reboot (hundreds of runs filled a 24 GiB machine's memory). Each rank maps its peers' segments inside
    ``init_distributed``, so after a barrier the names can go; the mappings live until the process exits.
    """
    own = shm_segment(dist.get_rank())
    barrier()  # every rank has returned from init_distributed: every peer segment is mapped
    try:
        own.unlink()
    except FileNotFoundError:  # not created: ranks on several hosts, another accelerator, or no LOCAL_SIZE
        return False
    return True


def leave_process_group() -> None:
    """Every rank leaves together: a rank that exits with the group's threads alive can abort at exit
    ("terminate called without an active exception"), failing a run that finished."""
    if dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
