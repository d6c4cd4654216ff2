#!/usr/bin/env bash
# The GPU check (../shared/GPU.md): on a bare H100/H200 machine with CUDA 13.0 and a python3 that
# has torch, triton, transformers, pytest, pytest-benchmark and hypothesis (no network):
#   1. print the GPU and versions; 2. build the extension from source; 3. run the CUDA tests;
#   4. run the GPU benchmarks and write one JSON into $OUT (else bench/results/), table last.
# Usage (device tool): INTERLEAVE_COMMIT=$(git rev-parse --short HEAD) bash bench/gpu_check.sh
# (expand the sha locally when writing the command). Budget: 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/results}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
status=0

echo "== 1. device and versions"
nvidia-smi -L || true
"$PY" - <<'PYEOF'
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
try:
    import triton; print("triton", triton.__version__)
except ImportError:
    print("triton not installed")
PYEOF

echo "== 2. build"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install --no-index --no-deps .whl/*.whl || true
fi
start=$(date +%s)
if ! MAX_JOBS=16 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" \
     "$PY" -m pip install --no-build-isolation --no-deps -e . > "$OUT_DIR/build.log" 2>&1; then
  tail -50 "$OUT_DIR/build.log"
  echo "BUILD FAILED"
  exit 1
fi
echo "built in $(( $(date +%s) - start ))s"
"$PY" -m interleave info

echo "== 3. CUDA tests"
"$PY" -m pytest -m cuda -x -q -p no:cacheprovider tests 2>&1 | tail -30
test_rc=${PIPESTATUS[0]}
[ "$test_rc" -eq 0 ] || status=1

echo "== 4. GPU benchmarks"
gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))" 2>/dev/null || echo gpu)
# The device copy of the tree may have no .git: pass INTERLEAVE_COMMIT=<short sha> in the command.
commit=${INTERLEAVE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
json="$OUT_DIR/$(date -u +%Y-%m-%d)-${gpu}-${commit}.json"
INTERLEAVE_COMMIT="$commit" "$PY" -m interleave bench --device cuda --reps 50 \
  --json "$json" --tests-rc "$test_rc" || status=1
exit $status
