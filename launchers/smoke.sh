#!/usr/bin/env bash
# Smoke test: both stages on a tiny model for a few hundred steps, asserting that the loss falls.
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
else
  echo "smoke: no GPU on this machine; running on CPU (DeepSpeed CPU accelerator, gloo)"
  export DS_ACCELERATOR=cpu
  EXTRA=()
fi
TINY=(--model.from_scratch '{"model_type": "t5", "d_model": 64, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 1, "num_heads": 4, "d_kv": 16, "dropout_rate": 0.0}'
      --data.suite '{"seed": 0, "train": 200, "validation": 20, "test": 20}' --model.vocab_size 500
      --data.curriculum null --train.warmup_steps 10 --train.log_every 5 --train.eval_every 100000
      --train.save_every 100000)
rm -rf "$OUT"
"$DEEPSPEED" --num_gpus 1 --master_port "${MASTER_PORT:-29650}" launchers/train.py --deepspeed ds_configs/stage1.json \
  "${TINY[@]}" "${EXTRA[@]}" --train.steps "$STEPS1" --train.output_dir "$OUT/stage1"
"$DEEPSPEED" --num_gpus 1 --master_port "${MASTER_PORT:-29650}" launchers/train.py --deepspeed ds_configs/stage2.json \
  "${TINY[@]}" "${EXTRA[@]}" --train.steps "$STEPS2" --train.output_dir "$OUT/stage2" \
  --train.init_from "$OUT/stage1/export"
"$PYTHON" - "$OUT" <<'PY'
import json, sys
for stage in ("stage1", "stage2"):
    losses = [r["loss"] for r in map(json.loads, open(f"{sys.argv[1]}/{stage}/metrics.jsonl")) if r["kind"] == "train"]
    k = max(1, len(losses) // 4)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    print(f"smoke {stage}: loss {first:.3f} -> {last:.3f} over {len(losses)} logged steps")
    assert last < first, f"{stage}: the loss did not fall"
print("smoke: OK")
PY
