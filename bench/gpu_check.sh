#!/usr/bin/env bash
# The GPU check (../shared/GPU.md): on a bare H100/H200 machine with CUDA 13.0 and a python3 that
# has torch, triton, transformers, pytest, pytest-benchmark and hypothesis (no network):
#   1. print the GPU and versions; 2. build the extension from source; 3. run the GPU benchmarks
#   (one JSON into $OUT, else bench/results/); 4. check that our ops' errors reach Python
#   (bench/errpath_diag.py; a backtrace under cuda-gdb if one crashes); 5. run the CUDA tests
#   (pytest -m cuda; per file if one crashes); the benchmark table; 6. bench/gpu_decide.py's reading
#   of the run (decide.log: each bar and each off-by-default path's verdict); 7. with what time is
#   left, Nsight Compute counters of the kernels whose bars are not met (bench/gpu_ncu.sh, appended
#   to profile.log).
# Before 3, bench/gpu_preflight.py runs each never-verified CUDA path once in its own process
# (preflight.log); one that fails is left out of 3 and 5 (INTERLEAVE_SKIP_PATHS).
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
bash bench/gpu_build.sh "$OUT_DIR/build.log" || exit 1
# How libstdc++ is linked (setup.py's dynamic_libstdcxx; the 404b09f run's .so had it linked in).
so=$(ls interleave/_C*.so 2>/dev/null | head -1)
echo "link: $(grep -oE -- "-l:libstdc\+\+[^ ]*|-static-libstdc\+\+" "$OUT_DIR/build.log" | sort -u | tr '\n' ' ')"\
"NEEDED: $(readelf -d "$so" 2>/dev/null | grep -oE 'lib(stdc\+\+|gcc_s|c10)[^]]*' | tr '\n' ' ')"\
"std::locale defined in our .so: $(nm -C --defined-only "$so" 2>/dev/null | grep -c 'std::locale::')"
"$PY" -m interleave info

echo "== 2b. preflight: each never-verified CUDA path once, in its own process (bench/gpu_preflight.py)"
. bench/gpu_preflight.sh "$OUT_DIR/preflight.log"

# Order: the benchmarks first (the numbers no other machine can give), then the error-path diagnosis
# and the tests; the whole script must fit the device's 8 minutes (the 2026-11-27 run in the old
# order -- per-file tests before the benchmarks -- ran out of time in the benchmarks).
echo "== 3. GPU benchmarks (capped at ${BENCH_BUDGET_S:-180}s; the JSON is written case by case)"
gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))" 2>/dev/null || echo gpu)
# The device copy of the tree may have no .git: pass INTERLEAVE_COMMIT=<short sha> in the command.
commit=${INTERLEAVE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
json="$OUT_DIR/$(date -u +%Y-%m-%d)-${gpu}-${commit}.json"
# Ops in the order of what the project most needs measured. linear_cross_entropy (issue 8, resolved;
# its H100 numbers are in bench/results/*5fd0fd1.json and *404b09f.json) is left out: ~40 s. The
# model last: its bar (time to first token 1.5x) held at 4.0x and 3.2x.
ops="patch_embed pack_tokens merge_tokens anyres_tiles image_processor model"
op_args=$(for o in $ops; do printf -- '--op %s ' "$o"; done)
# --no-compile: torch.compile baselines recompile per shape (tens of seconds in all); they are
# not bars, and the 8 minutes go to our kernels and their variants.
INTERLEAVE_COMMIT="$commit" timeout "${BENCH_BUDGET_S:-180}" "$PY" -m interleave bench --device cuda --reps 50 \
  --no-compile $op_args --json "$json" || { echo "bench: rc=$? (124: out of time; the JSON holds the cases that finished)"; status=1; }

echo "== 3b. where the time goes (bench/gpu_profile.py: kernel tables of a few cases)"
timeout 90 "$PY" bench/gpu_profile.py patch_embed:N=64:bfloat16 anyres_tiles:16.frames:uint8 \
  anyres_tiles:1411x1411:uint8 image_processor:OneVision:float32 image_processor:SigLIP.16:float32 \
  merge_tokens:D=1024:float32 merge_tokens:D=1024:bfloat16 \
  pack_tokens:video.32.frames.bilinear.27-\>14.H=1024:bfloat16 > "$OUT_DIR/profile.log" 2>&1 \
  || echo "profile: rc=$?"
grep -E "^==|^  [a-z_]+: wall" "$OUT_DIR/profile.log" | head -30

echo "== 4. error paths (each case in its own process; before c6aacb5 every C++ error our ops raised crashed on the H100)"
timeout 120 "$PY" bench/errpath_diag.py > "$OUT_DIR/errpath.log" 2>&1
errpath_rc=$?
grep -v "^    Extension modules" "$OUT_DIR/errpath.log" | head -60
if [ "$errpath_rc" -ne 0 ]; then
  first=$(grep -m1 ': CRASH' "$OUT_DIR/errpath.log" | cut -d: -f1)
  # Not reproducible on gcc 12 or 13 builds here (Debian, pyenv Python, same torch): what the device
  # has that differs -- its compiler/linker notes on our .so, Python's link flags, CET shadow stack.
  {
    echo "-- environment of the crash"
    so=$(ls interleave/_C*.so 2>/dev/null | head -1)
    readelf -p .comment "$so" 2>&1 | grep -v "^$" | head -8
    readelf -n "$so" 2>&1 | grep -i -A2 "x86 feature\|IBT\|SHSTK" | head -6
    ldd "$so" 2>&1 | head -20
    "$PY" -c "import sysconfig as s, platform; print('python', platform.python_version(), s.get_config_var('LDSHARED'), s.get_config_var('CC')); print('glibc', platform.libc_ver())"
    grep -i "x86_Thread\|Speculation" /proc/self/status
    g++ --version 2>&1 | head -1; ld --version 2>&1 | head -1
    echo "-- libstdc++: the link line, the toolchain's files, what our .so holds"
    grep -E -- "-shared .* -o [^ ]*_C\.cpython" "$OUT_DIR/build.log" | tail -1 | tr ' ' '\n' | grep -v "\.o$" | tr '\n' ' '; echo
    echo "CXX=${CXX:-unset} LDFLAGS=${LDFLAGS:-unset} $(g++ -print-file-name=libstdc++.so) $(g++ -print-file-name=libstdc++.so.6)"
    ls -l /usr/lib/gcc/x86_64-linux-gnu/*/libstdc++.* /usr/lib/x86_64-linux-gnu/libstdc++.so* 2>&1 | head -8
    readelf -d "$so" | grep NEEDED | tr -s ' ' | cut -d' ' -f5- | tr '\n' ' '; echo
    nm -C --defined-only "$so" | grep -E "std::(locale|ostream|basic_ostream|num_put)" | head -8
    # CET shadow stack (Ubuntu 24.04 builds with -fcf-protection; the CPU machine here has none):
    # the same failing case with glibc's shadow stack off.
    if [ -n "$first" ]; then
      echo "-- $first with GLIBC_TUNABLES=glibc.cpu.x86_shstk=off:"
      GLIBC_TUNABLES=glibc.cpu.x86_shstk=off timeout 60 "$PY" bench/errpath_diag.py "$first" 2>&1 | tail -2
      echo "rc=$?"
    else
      echo "-- no case crashed (errpath_diag rc=$errpath_rc: 124 is its timeout)"
    fi
  } >> "$OUT_DIR/errpath.log" 2>&1
  if [ -n "$first" ] && command -v cuda-gdb >/dev/null; then
    echo "-- backtraces of $first at the throw and at the crash (cuda-gdb, host code)" >> "$OUT_DIR/errpath.log"
    timeout 60 cuda-gdb -q -batch -ex "catch throw" -ex run -ex bt -ex continue -ex bt \
      --args "$PY" bench/errpath_diag.py "$first" 2>&1 | grep -E "^#|signal|Catchpoint|exception" | head -80 \
      >> "$OUT_DIR/errpath.log"
  fi
  sed -n '/-- environment of the crash/,$p' "$OUT_DIR/errpath.log" | head -90
fi

echo "== 5. CUDA tests"
# One pytest process for every file; if it dies of a signal (a segfault hides the rest of the
# run), once more one process per file so that one crash hides nothing else. Files back from the
# device: the JSON, build.log, profile.log, errpath.log, cuda-tests.log, cuda-tests-per-file.log (at most 8).
# Whatever is left of the device tool's 540 s (the script's own clock: $SECONDS), at most 240 s.
# GPU_CHECK_BUDGET_S (default 530): the script's whole budget; pass less when the device has less left.
budget=${GPU_CHECK_BUDGET_S:-530}
left=$(( budget - 10 - SECONDS )); [ "$left" -gt 240 ] && left=240; [ "$left" -lt 30 ] && left=30
# If the error paths crash (step 4), the tests that expect an error are skipped (tests/conftest.py).
skip_errors=0; [ "$errpath_rc" -ne 0 ] && skip_errors=1
# The tests of paths no GPU has verified yet run first (tests/conftest.py), so a cut-short run
# still answers for them: merge's look-back and sync-free settings, patch_embed's auto choice (the
# cuBLAS path at every size), the cuBLAS path's cuBLASLt GEMM, the operand cache, the gradchecks,
# the GEMM choices.
export INTERLEAVE_TEST_FIRST="lookback,loads16,cublaslt_tune,rows4,integer,sync_free,auto_gemm,cublas,operand_cache,gradcheck,wgmma,gemm_choice"
INTERLEAVE_SKIP_ERROR_TESTS=$skip_errors timeout "$left" "$PY" -X faulthandler -m pytest -m cuda -q -rs \
  -p no:cacheprovider tests > "$OUT_DIR/cuda-tests.log" 2>&1
test_rc=$?
echo "all files: rc=$test_rc $(tail -1 "$OUT_DIR/cuda-tests.log")"
if [ "$test_rc" -gt 124 ]; then
  # One log for all files (the device tool returns at most 8 files from $OUT); stops at the budget.
  for f in tests/test_*.py; do
    [ "$SECONDS" -lt $(( budget - 20 )) ] || { echo "out of time: per-file runs stop before $f"; break; }
    name=$(basename "$f" .py)
    INTERLEAVE_SKIP_ERROR_TESTS=$skip_errors timeout $(( budget - SECONDS )) "$PY" -X faulthandler -m pytest -m cuda -q -p no:cacheprovider "$f" > /tmp/cuda-one.log 2>&1
    rc=$?
    echo "$name: rc=$rc $(tail -1 /tmp/cuda-one.log)"
    { echo "===== $name: rc=$rc"; grep -v -e "^Extension modules" -e "^DEBUG" /tmp/cuda-one.log | tail -60; } >> "$OUT_DIR/cuda-tests-per-file.log"
  done
elif [ "$test_rc" -ne 0 ] && [ "$test_rc" -ne 5 ]; then
  grep -E "^(FAILED|ERROR)" "$OUT_DIR/cuda-tests.log" | head -30
fi
[ "$test_rc" -eq 0 ] || [ "$test_rc" -eq 5 ] || status=1
# Record the tests' outcome in the benchmark JSON (the benchmarks ran first).
[ -f "$json" ] && "$PY" - "$json" "$test_rc" <<'PYEOF'
import json, sys
path, rc = sys.argv[1], int(sys.argv[2])
report = json.load(open(path))
report["environment"]["cuda_tests_passed"] = rc in (0, 5)
json.dump(report, open(path, "w"), indent=1)
from interleave.bench import format_table
print(format_table(report["results"]))
PYEOF
echo "== 6. what the run decides (bench/gpu_decide.py: the bars, and the off-by-default paths to flip or not)"
[ -f "$json" ] && { "$PY" bench/gpu_decide.py "$json" "$OUT_DIR/cuda-tests.log" | tee "$OUT_DIR/decide.log"; } || echo "decide: no JSON"
echo "== 7. why (Nsight Compute counters of the kernels whose bars are not met; appended to profile.log)"
# Last, in what is left of the budget: diagnosis, not a verdict.
ncu_left=$(( budget - 15 - SECONDS ))
if [ "$ncu_left" -ge 40 ]; then
  NCU_BUDGET_S=$ncu_left bash bench/gpu_ncu.sh >> "$OUT_DIR/profile.log" 2>&1 || echo "ncu: rc=$?"
  grep -E "^--- |^ncu: " "$OUT_DIR/profile.log" | head -12
else
  echo "ncu: skipped, ${ncu_left}s left"
fi
exit $status
