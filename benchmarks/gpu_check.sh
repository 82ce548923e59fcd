#!/usr/bin/env bash
# The whole GPU check of issue 12 in one run (≤ 8 minutes on a lent GPU): the CUDA tests,
# then W1 and W1-many on the device, 3 repeats each, with absolute seconds and the ratio to
# forward-only (benchmarks/run.py prints both). Results land in $OUT (or benchmarks/results).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   DEVICE=cpu bash benchmarks/gpu_check.sh # the same script on the CPU (N=256), to try it first
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-benchmarks/results}"
PY="${PY:-python}"
mkdir -p "$OUT"
"$PY" - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
PY
status=0
if [ "$DEVICE" = cuda ]; then
    timeout 180 "$PY" -m pytest -q -m cuda tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.txt" || status=1
    quick=()
else
    timeout 180 "$PY" -m pytest -q tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.txt" || status=1
    quick=(--quick)
fi
timeout 300 "$PY" benchmarks/run.py --device "$DEVICE" --workloads W1,W1-many --repeats 3 "${quick[@]}" \
    --json "$OUT/bench-$DEVICE.json" 2>&1 | tee "$OUT/bench-$DEVICE.txt" || status=1
exit $status
