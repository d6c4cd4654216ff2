#!/usr/bin/env bash
# A focused GPU rerun, for a session whose device time cannot afford the whole bench/gpu_check.sh
# a second time: build, preflight the never-verified paths (bench/gpu_preflight.sh), benchmark only FOCUS_OPS, profile FOCUS_PROFILE (bench/gpu_profile.py case
# names), run only FOCUS_TESTS (pytest paths, -m cuda), then bench/gpu_decide.py, then Nsight Compute
# on FOCUS_NCU (bench/gpu_ncu.py specs), if given. Files in $OUT as
# gpu_check.sh writes them. Usage (device tool), e.g.:
#   INTERLEAVE_COMMIT=abc1234 FOCUS_OPS="merge_tokens patch_embed" \
#   FOCUS_PROFILE="merge_tokens:D=1024:bfloat16" FOCUS_TESTS="tests/test_merge_tokens.py" bash bench/gpu_focus.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/results}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
bash bench/gpu_build.sh "$OUT_DIR/build.log" || exit 1
. bench/gpu_preflight.sh "$OUT_DIR/preflight.log"
gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))" 2>/dev/null || echo gpu)
commit=${INTERLEAVE_COMMIT:-unknown}
json="$OUT_DIR/$(date -u +%Y-%m-%d)-${gpu}-${commit}-focus.json"
op_args=$(for o in ${FOCUS_OPS:-merge_tokens}; do printf -- '--op %s ' "$o"; done)
INTERLEAVE_COMMIT="$commit" timeout "${BENCH_BUDGET_S:-150}" "$PY" -m interleave bench --device cuda --reps 50 \
  --no-compile $op_args --json "$json" | grep -v "^\s*$" | cut -c1-220 || echo "bench: rc=$?"
if [ -n "${FOCUS_PROFILE:-}" ]; then
  timeout 90 "$PY" bench/gpu_profile.py $FOCUS_PROFILE > "$OUT_DIR/profile.log" 2>&1 || echo "profile: rc=$?"
  grep -E "^==|^  [a-z_0-9]+: wall|ms/call  x" "$OUT_DIR/profile.log" | cut -c1-150 | head -60
fi
timeout "${TEST_BUDGET_S:-150}" "$PY" -X faulthandler -m pytest -m cuda -q -rs -p no:cacheprovider \
  ${FOCUS_TESTS:-tests/test_merge_tokens.py} > "$OUT_DIR/cuda-tests.log" 2>&1
echo "tests: rc=$? $(tail -1 "$OUT_DIR/cuda-tests.log")"
grep -E "^(FAILED|ERROR)" "$OUT_DIR/cuda-tests.log" | head -20
[ -f "$json" ] && "$PY" bench/gpu_decide.py "$json" "$OUT_DIR/cuda-tests.log" | tee "$OUT_DIR/decide.log"
# FOCUS_NCU: bench/gpu_ncu.py specs to read under Nsight Compute (appended to profile.log).
if [ -n "${FOCUS_NCU:-}" ]; then
  NCU_SPECS="$FOCUS_NCU" NCU_BUDGET_S="${NCU_BUDGET_S:-90}" bash bench/gpu_ncu.sh >> "$OUT_DIR/profile.log" 2>&1
  grep -E "^--- |^ncu: " "$OUT_DIR/profile.log" | head -12
fi
