"""The layer benchmark runs end to end at a tiny shape and writes consistent JSON and a PNG."""
import json
import os
import subprocess
import sys

from test_training import REPO


def test_layer_dispatch_benchmark_writes_results(tmp_path):
    out, png = tmp_path / "layer.json", tmp_path / "layer.png"
    args = [sys.executable, "benchmarks/layer_dispatch.py", "--hidden", "32", "--experts", "4", "--k", "1", "2",
            "--tokens", "256", "--seq-len", "16", "--adapter-dim", "8", "--repeats", "1", "--warmup", "0",
            "--routing", "task", "--out", str(out), "--plot", str(png)]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [(r["k"], r["tokens"]) for r in result["rows"]] == [(1, 256), (2, 256)]
    for row in result["rows"]:
        assert row["speedup_vs_deepspeed"] == row["b_deepspeed_ms"] / row["a_grouped_ms"]
        assert row["ratio_to_floor"] == row["a_grouped_ms"] / row["d_floor_ms"]
        # three task types, Softmax-T init: each type's top-k adapters, at most 3·k of the 4
        assert 1 <= row["adapters_used"] <= min(4, 3 * row["k"])
        assert all(row[f"{v}_peak_mib"] > 0 for v in ("a_grouped", "b_deepspeed", "c_dense", "d_floor"))
    assert result["ffn"][0]["e_ffn_ms"] > 0
    assert result["environment"]["device"] == "cpu"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
