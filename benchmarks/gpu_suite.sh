#!/usr/bin/env bash
# The GPU measurements in one call: the smoke test (bf16), the layer sweep and the T5-small step in bf16
# and fp32, and the demo's training throughput; everything lands in RESULTS (default benchmarks/results/gpu).
#   bash benchmarks/gpu_suite.sh            (PYTHON and RESULTS may be set in the environment)
# Needs one visible CUDA device; stops with one line when there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
RESULTS=${RESULTS:-benchmarks/results/gpu}
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: gpu_suite.sh: no CUDA device is visible (torch.cuda.is_available() is False)" >&2
  exit 2
fi
mkdir -p "$RESULTS"
export DS_ACCELERATOR=cuda
"$PYTHON" -c 'import torch; print("gpu:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
env OUT=/tmp/mta_smoke PYTHON="$PYTHON" bash launchers/smoke.sh > "$RESULTS/smoke.log" 2>&1 \
  && echo "smoke: OK" || { echo "smoke: FAILED (see $RESULTS/smoke.log)"; tail -5 "$RESULTS/smoke.log"; }
for dtype in bf16 fp32; do
  for routing in learned task; do
    "$PYTHON" benchmarks/layer_dispatch.py --device cuda --dtype "$dtype" --routing "$routing" --hidden 768 \
      --experts 8 16 --k 2 --tokens 8192 32768 131072 --repeats 20 --warmup 3 \
      --out "$RESULTS/layer_dispatch_${dtype}_${routing}.json" --plot "$RESULTS/layer_dispatch_${dtype}_${routing}.png"
  done
  "$PYTHON" benchmarks/model_step.py --device cuda --dtype "$dtype" --repeats 20 --warmup 3 \
    --out "$RESULTS/model_step_${dtype}.json"
done
"$PYTHON" benchmarks/trainer_throughput.py --short 40 --long 240 --repeats 2 --out "$RESULTS/trainer_throughput.json"
echo "wrote $RESULTS"
