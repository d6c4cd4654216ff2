#!/usr/bin/env bash
# The GPU check (../shared/GPU.md): on a bare H100/H200 machine with CUDA 13.0 and a python3 that
# has torch, triton, transformers, pytest, pytest-benchmark and hypothesis (no network):
#   1. print the GPU and versions; 2. build the extension from source; 2b. check that our ops'
#   errors reach Python (bench/errpath_diag.py; a backtrace under cuda-gdb if one crashes); 3. run the CUDA tests;
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

echo "== 2b. error paths (each case in its own process; the first H100 run crashed on every C++ error)"
if ! timeout 300 "$PY" bench/errpath_diag.py 2>&1 | tee "$OUT_DIR/errpath.log"; then
  first=$(grep -m1 ': CRASH' "$OUT_DIR/errpath.log" | cut -d: -f1)
  if [ -n "$first" ] && command -v cuda-gdb >/dev/null; then
    echo "-- backtrace of $first (cuda-gdb, host code)"
    timeout 90 cuda-gdb -q -batch -ex run -ex bt -ex "info sharedlibrary" --args "$PY" bench/errpath_diag.py "$first" \
      > "$OUT_DIR/errpath-gdb.log" 2>&1
    grep -A40 -m1 "^#0" "$OUT_DIR/errpath-gdb.log" | head -40
  fi
fi

echo "== 3. CUDA tests"
# One pytest per file: a crash (segfault) in one file must not hide the others' results.
test_rc=0
for f in tests/test_*.py; do
  name=$(basename "$f" .py)
  timeout 600 "$PY" -X faulthandler -m pytest -m cuda -q -p no:cacheprovider "$f" > "$OUT_DIR/cuda-$name.log" 2>&1
  rc=$?
  # 5: no CUDA tests collected in that file
  [ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || { test_rc=1; tail -25 "$OUT_DIR/cuda-$name.log"; }
  echo "$name: rc=$rc $(tail -1 "$OUT_DIR/cuda-$name.log")"
done
[ "$test_rc" -eq 0 ] || status=1

echo "== 4. GPU benchmarks"
gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))" 2>/dev/null || echo gpu)
# The device copy of the tree may have no .git: pass INTERLEAVE_COMMIT=<short sha> in the command.
commit=${INTERLEAVE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
json="$OUT_DIR/$(date -u +%Y-%m-%d)-${gpu}-${commit}.json"
INTERLEAVE_COMMIT="$commit" "$PY" -m interleave bench --device cuda --reps 50 \
  --json "$json" --tests-rc "$test_rc" || status=1
exit $status
