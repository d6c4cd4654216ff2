# Sourced by bench/gpu_check.sh and bench/gpu_focus.sh (". bench/gpu_preflight.sh LOG"): runs
# bench/gpu_preflight.py (each never-verified CUDA path once, in its own process; its log to LOG) and
# exports what the rest of the run needs from its verdicts.
# A kernel fault leaves a sticky CUDA error for the rest of a process: a path that fails here is
# left out of the benchmark and its CUDA tests are skipped (INTERLEAVE_SKIP_PATHS; preflight.log).
# PREFLIGHT_ALL=1 checks the GPU-verified paths too (gpu_preflight.py --all).
timeout 200 "${PYTHON:-python3}" bench/gpu_preflight.py ${PREFLIGHT_ALL:+--all} > "$1" 2>&1 || echo "preflight: rc=$?"
cat "$1" | grep -E "^[a-z0-9_]+: |^INTERLEAVE_SKIP_PATHS"
skip_line=$(grep -E "^INTERLEAVE_SKIP_PATHS=" "$1" | tail -1)
export INTERLEAVE_SKIP_PATHS="${skip_line#INTERLEAVE_SKIP_PATHS=}"
# No verdict line (a hang past the time limit): rule out every path it was to check.
[ -n "$skip_line" ] || export INTERLEAVE_SKIP_PATHS="$("${PYTHON:-python3}" bench/gpu_preflight.py --list ${PREFLIGHT_ALL:+--all})"
# Paths on a default path: turned off for the whole run by their own switches.
case ",$INTERLEAVE_SKIP_PATHS," in *,im2col_staged,*) export INTERLEAVE_IM2COL_STAGED=0 ;; esac
case ",$INTERLEAVE_SKIP_PATHS," in *,cublas_lt,*) export INTERLEAVE_CUBLASLT=0 ;; esac
case ",$INTERLEAVE_SKIP_PATHS," in *,anyres_arena_cache,*) export INTERLEAVE_ANYRES_ARENA_CACHE=0 ;; esac
echo "INTERLEAVE_SKIP_PATHS=$INTERLEAVE_SKIP_PATHS IM2COL_STAGED=${INTERLEAVE_IM2COL_STAGED:-1}" \
  "CUBLASLT=${INTERLEAVE_CUBLASLT:-1} ANYRES_ARENA_CACHE=${INTERLEAVE_ANYRES_ARENA_CACHE:-1}"
