#!/usr/bin/env bash
# Build the extension on the GPU machine for bench/gpu_check.sh and bench/gpu_focus.sh: the carried
# wheels first (.whl/, see the device library's README), then pip's editable build for sm_90a with the
# machine's 16 cores. The build's log goes to $1; its tail is printed if it fails (exit 1).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
log=${1:?usage: gpu_build.sh LOG}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install --no-index --no-deps .whl/*.whl || true
fi
start=$(date +%s)
if ! MAX_JOBS=16 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" \
     "$PY" -m pip install -v --no-build-isolation --no-deps -e . > "$log" 2>&1; then
  tail -50 "$log"
  echo "BUILD FAILED"
  exit 1
fi
echo "built in $(( $(date +%s) - start ))s"
