#!/usr/bin/env bash
# Smoke test: both stages on a tiny model for a few hundred steps, then checks that cannot flip on noise:
#   stage 1: the loss falls to below 70 % of where it started (means over the first and last fifths);
#   stage 2: it starts from the stage-1 export (the switch leaves the outputs unchanged), ends no higher than
#            stage 1 ended plus 10 %, every backbone parameter is bit-identical and the MTA parameters moved;
#   the engine's parameters are in bf16 on a GPU, fp32 on CPU (read back from the run's `engine` record).
# Uses one GPU (bf16) when there is one; otherwise runs on CPU and says so.
#   bash launchers/smoke.sh            (STEPS1, STEPS2, OUT and PYTHON may be set in the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/smoke}
STEPS1=${STEPS1:-300}
STEPS2=${STEPS2:-100}
DEEPSPEED="$(dirname "$(command -v "$PYTHON")")/deepspeed"
[ -x "$DEEPSPEED" ] || DEEPSPEED=deepspeed
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "smoke: GPU $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))'), bf16"
  EXTRA=(--bf16 '{"enabled": true}')
  DTYPE=bfloat16
else
  echo "smoke: no GPU on this machine; running on CPU (DeepSpeed CPU accelerator, gloo)"
  export DS_ACCELERATOR=cpu
  EXTRA=()
  DTYPE=float32
fi
TINY=(--model.from_scratch '{"model_type": "t5", "d_model": 64, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 1, "num_heads": 4, "d_kv": 16, "dropout_rate": 0.0}'
      --data.suite '{"seed": 0, "train": 200, "validation": 20, "test": 20}' --model.vocab_size 500
      --data.curriculum null --train.warmup_steps 10 --train.log_every 5 --train.eval_every 100000
      --train.save_every 100000)
rm -rf "$OUT"
"$DEEPSPEED" --num_gpus 1 --master_port "${MASTER_PORT:-29650}" --module mta_moe.cli train --deepspeed ds_configs/stage1.json \
  "${TINY[@]}" "${EXTRA[@]}" --train.steps "$STEPS1" --train.output_dir "$OUT/stage1"
"$DEEPSPEED" --num_gpus 1 --master_port "${MASTER_PORT:-29650}" --module mta_moe.cli train --deepspeed ds_configs/stage2.json \
  --data.suite '{"seed": 0, "train": 200, "validation": 20, "test": 20}' --data.curriculum null \
  --train.warmup_steps 10 --train.log_every 5 --train.eval_every 100000 --train.save_every 100000 \
  "${EXTRA[@]}" --train.steps "$STEPS2" --train.output_dir "$OUT/stage2" --train.init_from "$OUT/stage1/export"
"$PYTHON" - "$OUT" "$DTYPE" <<'PY'
import json, sys
import torch
from safetensors.torch import load_file
from mta_moe.modeling.layer import component_of

out, dtype = sys.argv[1], sys.argv[2]
def records(stage):
    return [json.loads(line) for line in open(f"{out}/{stage}/metrics.jsonl")]
def fifths(stage):
    losses = [r["loss"] for r in records(stage) if r["kind"] == "train"]
    k = max(1, len(losses) // 5)
    return sum(losses[:k]) / k, sum(losses[-k:]) / k, len(losses)
first1, last1, n1 = fifths("stage1")
first2, last2, n2 = fifths("stage2")
print(f"smoke stage1: loss {first1:.3f} -> {last1:.3f} over {n1} logged steps")
print(f"smoke stage2: loss {first2:.3f} -> {last2:.3f} over {n2} logged steps (stage 1 ended at {last1:.3f})")
assert last1 < 0.7 * first1, f"stage1: the loss did not fall below 70 % of its start ({first1:.3f} -> {last1:.3f})"
assert last2 <= 1.1 * last1, f"stage2: ended at {last2:.3f}, more than 10 % above stage 1's end ({last1:.3f})"
before = load_file(f"{out}/stage1/export/model.safetensors")
after = load_file(f"{out}/stage2/export/model.safetensors")
backbone = [k for k in before if component_of(k) == "backbone"]
assert backbone and all(torch.equal(before[k], after[k]) for k in backbone), "stage2: a frozen parameter changed"
moved = [k for k in before if component_of(k) == "adapters" and not torch.equal(before[k], after[k])]
assert moved, "stage2: no adapter parameter changed"
print(f"smoke stage2: {len(backbone)} backbone tensors bit-identical, {len(moved)} adapter tensors trained")
for stage in ("stage1", "stage2"):
    engine = next(r for r in records(stage) if r["kind"] == "engine")
    print(f"smoke {stage}: engine on {engine['device']}, parameters in {engine['param_dtypes']}")
    assert engine["param_dtypes"] == [dtype], f"{stage}: expected parameters in {dtype}, got {engine['param_dtypes']}"
print("smoke: OK")
PY
