"""Launch paths besides the deepspeed launcher: SLURM variable mapping (and the batch script under a stand-in
srun), torchrun, and the smoke script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from distributed import free_port, run_workers
from test_training import REPO, tiny_config, train_losses, write_config

from mta_moe.training.distributed import SHM_DIR, slurm_to_torch_env


def test_slurm_variables_map_to_torch_ones():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NNODES": "1", "SLURM_JOB_ID": "77"}
    assert slurm_to_torch_env(env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29577"}
    assert env["RANK"] == "5" and slurm_to_torch_env(env) == {}  # already mapped: left alone
    torchrun = {"SLURM_PROCID": "0", "RANK": "3", "WORLD_SIZE": "4"}  # torchrun inside an allocation wins
    assert slurm_to_torch_env(torchrun) == {} and torchrun["RANK"] == "3"
    multi = {"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_NNODES": "2", "MASTER_ADDR": "node01", "MASTER_PORT": "29400"}
    assert slurm_to_torch_env(multi) == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1"}
    with pytest.raises(RuntimeError, match="without MASTER_ADDR"):
        slurm_to_torch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_NNODES": "2"})
    assert slurm_to_torch_env({"PATH": "/bin"}) == {}


FAKE_SRUN = """#!/bin/bash
# stands in for srun: starts SLURM_NTASKS copies of the command with the per-task SLURM variables
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i "$@" > "$FAKE_LOG_DIR/task$i.log" 2>&1 & pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
"""


def test_batch_script_runs_two_tasks_under_a_stand_in_srun(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho 127.0.0.1\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    cfg = write_config(tmp_path / "cfg.json", tiny_config(tmp_path / "run", steps=2, save_every=2, eval_every=2))
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "DS_ACCELERATOR": "cpu",
        "SLURM_JOB_NODELIST": "node[01]",
        "SLURM_JOB_ID": str(4000 + os.getpid() % 1000),
        "SLURM_NTASKS": "2",
        "SLURM_NNODES": "1",
        "FAKE_LOG_DIR": str(tmp_path),
        "PYTHONPATH": str(REPO),
    }
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    run = subprocess.run(["bash", "launchers/slurm/train.sbatch", str(cfg)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    logs = "".join(p.read_text()[-2000:] for p in sorted(tmp_path.glob("task*.log")))
    assert run.returncode == 0, run.stdout + run.stderr + logs
    assert "2 tasks on 1 node(s), master 127.0.0.1" in run.stdout
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in records if r["kind"] == "run"] == [2]
    assert sorted(train_losses(tmp_path / "run")) == [1, 2]


@pytest.mark.slow
def test_torchrun_and_deepspeed_launchers_train_the_same(tmp_path):
    runs = {}
    for name, cmd in {
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())],
        "deepspeed": [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())],
    }.items():
        port = cmd[-1]
        cfg = write_config(tmp_path / f"{name}.json", tiny_config(tmp_path / name, steps=3, save_every=3, eval_every=3))
        run = subprocess.run(
            [*cmd, "launchers/train.py", "--deepspeed", str(cfg)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)},
        )
        assert run.returncode == 0, run.stderr[-3000:]
        runs[name] = train_losses(tmp_path / name)
        # the deepspeed launcher's runs start DeepSpeed's shared-memory allreduce: its segments must not outlive them
        assert not list(SHM_DIR.glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    assert runs["torchrun"] == runs["deepspeed"] and len(runs["torchrun"]) == 3


def test_deepspeed_shared_memory_segments_are_released_and_still_reduce(tmp_path, monkeypatch):
    """DeepSpeed creates one /dev/shm segment per rank when every rank is local and never unlinks it (each run left
    ~66 MB per rank in memory); once every rank has mapped them the names go, and the allreduce still runs on them."""
    monkeypatch.setenv("LOCAL_SIZE", "2")  # what the deepspeed launcher sets: DeepSpeed's test for "all ranks local"
    results = run_workers("shm_worker.py", [], 2, tmp_path, timeout=120)
    for record in results:
        assert record["before"] == [True, True] and record["released"] is True
        assert record["after"] == [False, False]
        assert record["sum"] == [3.0]  # 1 + 2 on every element, through the unlinked segments
    if results[0]["level"] < 1:
        pytest.skip("this CPU has no avx2: DeepSpeed reduced through gloo, not through the released segments")


@pytest.mark.slow
def test_smoke_script_on_cpu(tmp_path):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "smoke"),
        "STEPS1": "40",
        "STEPS2": "40",
        "MASTER_PORT": str(free_port()),
        "PYTHONPATH": str(REPO),
    }
    run = subprocess.run(["bash", "launchers/smoke.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "no GPU on this machine; running on CPU" in run.stdout
    assert "smoke: OK" in run.stdout
