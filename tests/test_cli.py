"""The ``mta-moe`` command: subcommands, quick help without heavy imports, the launcher's ``--local_rank``, and
the built wheel installed on its own (no source checkout) training a tiny model."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from test_training import REPO, tiny_config, write_config

HEAVY = ("deepspeed", "torch", "nltk", "matplotlib", "datasets", "transformers")


def test_help_lists_every_subcommand_without_importing_heavy_modules():
    code = (
        "import sys, contextlib, io\nfrom mta_moe.cli import main\nout = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n    try:\n        main(['--help'])\n"
        "    except SystemExit:\n        pass\n"
        f"print(out.getvalue())\nprint([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.returncode == 0, run.stderr
    for command in ("train", "evaluate", "report", "compare", "affinity", "export", "check-data"):
        assert f"    {command}" in run.stdout
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_module_form_drops_the_launchers_local_rank(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"input": "a b", "target": "c", "type": "nli", "task": "t"}) + "\n")
    run = subprocess.run([sys.executable, "-m", "mta_moe.cli", "--local_rank=0", "check-data", str(data)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "tasks: t (nli)" in run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "mta_moe.cli", "evaluate", "--model", "x", "--data", "y", "--nope"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "unrecognized arguments: --nope" in bad.stderr


def test_check_data_imports_neither_torch_nor_transformers(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"input": f"a {i}", "target": "c", "type": "nli", "task": "t"}) + "\n" for i in range(100)))
    code = f"import sys\nfrom mta_moe.cli import main\nassert main(['check-data', {str(data)!r}]) == 0\nprint([m for m in {HEAVY!r} if m in sys.modules])\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "100 rows" in run.stdout
    assert run.stdout.strip().splitlines()[-1] == "['datasets']"  # the reader builds a datasets.Dataset


@pytest.mark.slow
def test_the_built_wheel_installs_and_trains_outside_the_source_tree(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(dist.glob("mta_moe-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.check_output([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    # the dependencies come from this environment (a path, so its editable mta_moe hook is not loaded)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    assert (venv / "bin" / "mta-moe").is_file()  # the console script pip wrote from [project.scripts]
    entry = [line for line in (next(site.glob("mta_moe-*.dist-info")) / "entry_points.txt").read_text().splitlines() if line.startswith("mta-moe")]
    assert entry == ["mta-moe = mta_moe.cli:main"]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"DS_ACCELERATOR": "cpu"}
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import mta_moe; print(mta_moe.__file__)"], cwd=work, capture_output=True, text=True, env=env, timeout=60
    )
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    cfg = write_config(work / "c.json", tiny_config(work / "run", steps=3, eval_every=3, save_every=3))
    run = subprocess.run([str(venv / "bin" / "mta-moe"), "train", "--deepspeed", str(cfg)], cwd=work, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (work / "run" / "export" / "model.safetensors").is_file()
