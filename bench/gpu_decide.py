"""Reads one GPU run (bench/gpu_check.sh's JSON and cuda-tests.log) and prints what it decides: the
issues' GPU bars with the measured numbers, and the off-by-default paths waiting for a GPU
(anyres_tiles' tensor-core passes, patch_embed's wgmma kernel and cuBLASLt operand, merge_tokens'
look-back) with "flip the default" or not.

    python3 bench/gpu_decide.py RUN.json [cuda-tests.log]

A session on a GPU has minutes, not hours: this turns the run into the few lines that say what to
change, so the numbers are read the same way every time. It decides nothing itself; the README and
the code say where each default lives.
"""
import json
import re
import sys

# The issues' GPU bars (issues 2-6).
MERGE_BAR, ANYRES_BAR, PACK_BAR, ROOFLINE_BAR, TTFT_BAR = 0.85, 0.70, 0.80, 0.50, 1.5
PROCESSOR_BAR = 10.0  # issue 3: the image processor against transformers' with device="cuda"


def load_failures(log_path):
    """(failed test ids, whether the log ends with pytest's summary line); None without a log."""
    if not log_path:
        return None
    try:
        text = open(log_path, errors="replace").read()
    except OSError:
        return None
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)
    finished = re.search(r"^=*\s*(?:\d+ (?:passed|failed|skipped|error|errors|deselected)[, ]*)+.* in [\d.]+s", text,
                         flags=re.M) is not None
    return failed, finished


def tests_ok(failures, needle):
    """'passed', 'FAILED: ...' or 'unknown' for the tests whose id contains `needle`."""
    if failures is None:
        return "unknown (no cuda-tests.log)"
    failed, finished = failures
    bad = [f for f in failed if needle in f]
    if bad:
        return "FAILED: " + ", ".join(bad[:4])
    return "passed" if finished else "unknown (the test run did not finish)"


def best_device_time(result, name):
    dev = result.get("device_ms", {})
    return dev.get(name, result["median_ms"].get(name))


def fraction(result, name="ours"):
    """The best fraction of a same-size copy this implementation reached: device time if measured."""
    dev = result.get("device_fraction_of_same_size_copy", {})
    if name in dev:
        return dev[name], "device"
    if name == "ours":
        if "fraction_of_same_size_copy" in result:
            return result["fraction_of_same_size_copy"], "call"
        return result.get("fraction_of_copy_bw"), "call, vs 1 GiB copy"
    if name in result.get("variants_fraction_of_same_size_copy", {}):
        return result["variants_fraction_of_same_size_copy"][name], "call"
    return result.get("variants_fraction_of_copy_bw", {}).get(name), "call, vs 1 GiB copy"


def fmt(x, pct=True):
    if x is None:
        return "n/a"
    return f"{100 * x:.0f}%" if pct else f"{x:.3f}"


def by_op(results, op):
    return [r for r in results if r.get("op") == op and r.get("device") == "cuda"]


def _bandwidth_line(r, label, bar):
    """Against a copy of the same bytes (device time where measured) and, as the issues word the
    bars ("the measured device-copy bandwidth"), against the run's 1 GiB copy (call time)."""
    ours, how = fraction(r, "ours")
    line = f"  {label}: ours {fmt(ours)} of a same-size copy ({how}), {fmt(r.get('fraction_of_copy_bw'))} " \
        f"of the 1 GiB copy; bar {fmt(bar)}: " + ("met" if ours is not None and ours >= bar else "not met")
    variants = [(fraction(r, n)[0] or 0, n) for n in r.get("variants_gbps", {})]
    if variants:
        best = max(variants)
        line += f"; best variant {best[1]} {fmt(best[0])} " \
            f"({fmt(r.get('variants_fraction_of_copy_bw', {}).get(best[1]))} of the 1 GiB copy)"
    print(line)


def bars(results):
    print("== GPU bars (ours = the default path; a variant that meets a bar the default misses is a setting to change)")
    for r in by_op(results, "merge_tokens"):
        _bandwidth_line(r, f"merge_tokens {r['shape']} {r['dtype']}", MERGE_BAR)
    for r in by_op(results, "anyres_tiles"):
        _bandwidth_line(r, f"anyres_tiles {r['shape']}", ANYRES_BAR)
    for r in by_op(results, "pack_tokens"):
        _bandwidth_line(r, f"pack_tokens {r['shape']} {r['dtype']}", PACK_BAR)
    for r in by_op(results, "patch_embed"):
        if r["dtype"] != "bfloat16" or "N=64" not in r["shape"]:
            continue
        roof = r.get("roofline", {}).get("fraction", {})
        speedup = r.get("speedup_vs", {}).get("transformers", float("nan"))
        if roof:
            ours = max(v for k, v in roof.items() if k in ("ours", "ours (device)"))
            best = max((v, k) for k, v in roof.items() if k.startswith("ours"))
            print(f"  patch_embed {r['shape']} bf16: ours roofline fraction {ours:.2f}; bar {ROOFLINE_BAR}: "
                  f"{'met' if ours >= ROOFLINE_BAR else 'not met'}; best {best[1]} {best[0]:.2f}; "
                  f"vs the cuDNN path {speedup:.1f}x (bar 2x)")
        else:
            print(f"  patch_embed {r['shape']} bf16: no roofline in this run; vs the cuDNN path {speedup:.1f}x (bar 2x)")
    for r in by_op(results, "image_processor"):
        s = r.get("speedup_vs", {}).get("transformers_torchvision")
        if s is None:
            print(f"  image_processor {r['shape']}: no torchvision baseline in this run")
            continue
        print(f"  image_processor {r['shape']}: {s:.1f}x transformers' torchvision processor on CUDA; "
              f"bar {PROCESSOR_BAR:.0f}x: {'met' if s >= PROCESSOR_BAR else 'not met'}")
    for r in by_op(results, "model"):
        if "first token" in r["shape"]:
            s = r["speedup_vs"].get("transformers")
            print(f"  model time to first token: {s:.2f}x transformers; bar {TTFT_BAR}x: "
                  f"{'met' if s is not None and s >= TTFT_BAR else 'not met'}")


def variant_cases(results, op, variant, title):
    """The CUDA cases of `op` that timed `variant`, after printing the section's title."""
    print(f"== {title}")
    cases = [r for r in by_op(results, op) if variant in r["median_ms"]]
    if not cases:
        print(f"  no {variant} variant in this run")
    return cases


def anyres_decision(results, failures):
    cases = variant_cases(results, "anyres_tiles", "ours_mma",
                          "anyres_tiles tensor-core passes (default off: anyres_cuda_mma() in csrc/ops/anyres_tiles_checks.cpp)")
    if not cases:
        return
    faster, equal = True, True
    for r in cases:
        eq = r.get("variants_bitwise_equal", {}).get("ours_mma")
        a, b = best_device_time(r, "ours"), best_device_time(r, "ours_mma")
        faster &= b < a
        equal &= bool(eq)
        print(f"  {r['shape']}: ours {a:.3f} ms, ours_mma {b:.3f} ms ({a / b:.2f}x), bitwise equal: {eq}")
    t = tests_ok(failures, "tensor_core")
    print(f"  test_cuda_tensor_core_pass_equals_pillow: {t}")
    verdict = equal and faster and t == "passed"
    print(f"  -> {'FLIP the default to true' if verdict else 'keep it off'}")


def variant_decision(results, failures, variant, title, test_needle, verdict, yes, no, op="anyres_tiles",
                     time=best_device_time, note=lambda r, a, b: ""):
    """A bitwise-equal variant of `op` behind an off default: make it the default where it was
    faster (2% or more, by `time`: the device time unless told otherwise) in every case, equal in
    every case, and its CUDA tests (ids containing test_needle) passed. `note`: more for a case's line."""
    cases = variant_cases(results, op, variant, title)
    if not cases:
        return
    faster, equal = True, True
    for r in cases:
        eq = r.get("variants_bitwise_equal", {}).get(variant)
        a, b = time(r, "ours"), time(r, variant)
        faster &= b < a * 0.98
        equal &= bool(eq)
        print(f"  {r['shape']}: ours {a:.3f} ms, {variant} {b:.3f} ms ({a / b:.2f}x), bitwise equal: {eq}{note(r, a, b)}")
    t = tests_ok(failures, test_needle)
    print(f"  -> {verdict} (tests: {t}): " + (yes if faster and equal and t == "passed" else no))


def anyres_rows4_decision(results, failures):
    variant_decision(
        results, failures, "ours_rows4",
        "anyres_tiles SIMT pass 1 with 4 rows per block (default 1: anyres_cuda_simt_rows() in "
        "csrc/ops/anyres_tiles_checks.cpp)", "rows4", "SIMT pass 1, 4 rows per block",
        "make it the default (anyres_cuda_simt_rows in csrc/ops/anyres_tiles_checks.cpp)", "keep 1")


def anyres_imma_decision(results, failures):
    variant_decision(
        results, failures, "ours_imma",
        "anyres_tiles pass 1 on integer tensor cores, the vertical pass fused into its blocks (default off: "
        "anyres_cuda_imma() in csrc/ops/anyres_tiles_checks.cpp)", "tensor_core_pass_equals_pillow[integer-",
        "integer tensor-core pass 1, fused",
        "make it the default (anyres_cuda_imma in csrc/ops/anyres_tiles_checks.cpp)", "keep it off")
    variant_decision(
        results, failures, "ours_imma_unfused",
        "anyres_tiles pass 1 on integer tensor cores, the intermediate in global memory (cuda_fused_passes(False))",
        "tensor_core_pass_equals_pillow[integer_unfused", "integer tensor-core pass 1, unfused",
        "make it the default unfused (anyres_cuda_imma on, anyres_cuda_fused off, in "
        "csrc/ops/anyres_tiles_checks.cpp) if the fused line above does not say so too", "keep it off")
    variant_decision(
        results, failures, "ours_imma_staged",
        "anyres_tiles integer pass 1, fused, each warp's source rows staged by 16-byte cp.async "
        "(cuda_integer_staged_rows(); default off: anyres_cuda_imma_staged() in csrc/ops/anyres_tiles_checks.cpp)",
        "tensor_core_pass_equals_pillow[integer_staged", "integer tensor-core pass 1, staged source rows",
        "make the staged rows the default with the integer pass (anyres_cuda_imma and anyres_cuda_imma_staged in "
        "csrc/ops/anyres_tiles_checks.cpp) if it is also faster than ours_imma below", "keep it off")
    for r in by_op(results, "anyres_tiles"):
        if {"ours_imma", "ours_imma_staged"} <= set(r["median_ms"]):
            a, b = best_device_time(r, "ours_imma"), best_device_time(r, "ours_imma_staged")
            print(f"  {r['shape']}: integer fused {a:.3f} ms, staged rows {b:.3f} ms ({a / b:.2f}x)")
    both = [r for r in by_op(results, "anyres_tiles") if {"ours_imma", "ours_imma_unfused"} <= set(r["median_ms"])]
    if both:
        fused = sum(best_device_time(r, "ours_imma") for r in both)
        unfused = sum(best_device_time(r, "ours_imma_unfused") for r in both)
        print(f"  integer pass 1 over the {len(both)} cases: fused {fused:.3f} ms, unfused {unfused:.3f} ms -> "
              + ("fused is faster: where both lines above say make it the default, take the fused one"
                 if fused <= unfused else "unfused is faster: where both say make it the default, "
                 "also turn anyres_cuda_fused off (it governs the fp16 tensor-core path's fusion too)"))


def wgmma_decision(results, failures):
    cases = variant_cases(results, "patch_embed", "ours_wgmma",
                          "patch_embed wgmma kernel (a variant: kAuto in csrc/cuda/patch_embed_cuda.cpp is "
                          "the cuBLAS path at every size since 12ae393's run)")
    if not cases:
        return
    ran = all(any("ran the wgmma kernel: True" in n for n in r.get("notes", [])) for r in cases)
    within = all(r.get("variants_within_2x_reference_error", False) for r in cases)
    faster = []  # the shapes where the wgmma kernel beats auto
    for r in cases:
        a, b = best_device_time(r, "ours"), best_device_time(r, "ours_wgmma")
        roof = r.get("roofline", {}).get("fraction", {})
        rw = roof.get("ours_wgmma (device)", roof.get("ours_wgmma"))
        err = r.get("variants_error_vs_float64", {}).get("ours_wgmma")
        print(f"  {r['shape']}: ours (auto) {a:.3f} ms, ours_wgmma {b:.3f} ms ({a / b:.2f}x), roofline "
              f"{fmt(rw, pct=False)}, error vs float64 {err}")
        if b < a:
            faster.append(r["shape"].split(" ")[0])
    t = tests_ok(failures, "wgmma")
    print(f"  ran the wgmma kernel: {ran}; variants within 2x of the reference's error: {within}; tests: {t}")
    staged_faster = []
    has_staged = False
    for r in cases:  # the staged variant (A copied into shared memory per tile), where the run has it
        if "ours_wgmma_staged" in r["median_ms"]:
            has_staged = True
            a = best_device_time(r, "ours")
            b, c = best_device_time(r, "ours_wgmma"), best_device_time(r, "ours_wgmma_staged")
            roof = r.get("roofline", {}).get("fraction", {})
            rs = roof.get("ours_wgmma_staged (device)", roof.get("ours_wgmma_staged"))
            print(f"  {r['shape']}: ours_wgmma_staged {c:.3f} ms vs ours_wgmma {b:.3f} ms ({b / c:.2f}x), "
                  f"vs ours (auto) {a:.3f} ms ({a / c:.2f}x), roofline {fmt(rs, pct=False)}")
            if c < min(a, b):
                staged_faster.append(r["shape"].split(" ")[0])
    if has_staged:
        st = tests_ok(failures, "wgmma_staged")
        print(f"  -> staged variant (tests: {st}): "
              + (f"let auto choose it at {', '.join(staged_faster)} (kAuto in csrc/cuda/patch_embed_cuda.cpp)"
                 if staged_faster and st == "passed" else "keep it a variant"))
    verdict = ran and within and t == "passed" and faster
    print("  -> wgmma kernel: " + (f"let auto choose it at {', '.join(faster)}" if verdict else "keep it a variant"))


def cublaslt_decision(results, failures):
    """cuda_gemm("cublas") puts the position embedding into a batched cuBLASLt GEMM's C operand;
    "cublas_copy" copies it into the output first (and is the fallback where cuBLASLt refuses).
    Auto takes the first below 4096 tokens (N=1) and the second from there since 12ae393's run."""
    cases = variant_cases(results, "patch_embed", "ours_cublas_copy",
                          "patch_embed cuBLAS path: position embedding in cuBLASLt's C (cublas) vs copied first "
                          "(cublas_copy); auto: cublas below 4096 tokens, cublas_copy from there")
    if not cases:
        return
    small_lt = large_lt = True
    for r in cases:
        lt, copy = best_device_time(r, "ours_cublas"), best_device_time(r, "ours_cublas_copy")
        print(f"  {r['shape']}: ours_cublas {lt:.3f} ms, ours_cublas_copy {copy:.3f} ms ({copy / lt:.2f}x)")
        if "N=1 " in r["shape"]:
            small_lt &= lt <= copy
        else:
            large_lt &= lt < copy
    t = tests_ok(failures, "cublas")
    within = all(r.get("variants_within_2x_reference_error", False) for r in cases)
    ok = within and t == "passed"
    tuned_cases = [r for r in cases if "ours_cublas_tuned" in r["median_ms"]]
    tuned_faster = bool(tuned_cases)
    for r in tuned_cases:
        lt, tuned = best_device_time(r, "ours_cublas"), best_device_time(r, "ours_cublas_tuned")
        print(f"  {r['shape']}: ours_cublas_tuned {tuned:.3f} ms vs ours_cublas {lt:.3f} ms ({lt / tuned:.2f}x)")
        tuned_faster &= tuned < lt * 0.98
    if tuned_cases:
        tt = tests_ok(failures, "cublaslt_tune")
        print(f"  -> algorithm tuning (tests: {tt}): "
              + ("make it the default (patch_embed_cublaslt_tune in csrc/ops/patch_embed_checks.cpp)"
                 if tuned_faster and tt == "passed" and within else "keep it off"))
    print(f"  variants within 2x of the reference's error: {within}; tests with 'cublas' in their id: {t}")
    print(f"  -> below 4096 tokens: {'keep cuBLASLt' if small_lt and ok else 'take cublas_copy'}; "
          f"from 4096 tokens: {'take cuBLASLt there too' if large_lt and ok else 'keep cublas_copy'} "
          "(kPatchEmbedLtMaxRows in csrc/ops/patch_embed.h)")


def merge_sync_free_decision(results, failures):
    """merge_tokens' sync-free path (the bar's path): the default (one launch, each block counting
    the ids before its chunk) against its variants: the decoupled look-back (off by default since
    de8175c's run), the count kernel first, 16 loads in flight per thread in the row copy."""
    cases = variant_cases(results, "merge_tokens", "ours_sync_free_lookback",
                          "merge_tokens sync-free path: the default (self count, 8 loads) vs the look-back, "
                          "the count kernel first and 16 loads (device time, cold L2)")
    if not cases:
        return
    names = ("ours_sync_free_lookback", "ours_sync_free_two_launch", "ours_sync_free_loads16",
             "ours_sync_free_lookback_loads16")
    # Each change alone and on top of the other: (with, without) pairs of implementations.
    pairs = {"lookback": [("ours_sync_free_lookback", "ours_sync_free"),
                          ("ours_sync_free_lookback_loads16", "ours_sync_free_loads16")],
             "loads16": [("ours_sync_free_loads16", "ours_sync_free"),
                         ("ours_sync_free_lookback_loads16", "ours_sync_free_lookback")]}
    wins = {k: [True] * len(v) for k, v in pairs.items()}
    for r in cases:
        base = best_device_time(r, "ours_sync_free")
        parts = [f"{n[len('ours_sync_free_'):]} {best_device_time(r, n):.4f} ms ({fmt(fraction(r, n)[0])}, "
                 f"{base / best_device_time(r, n):.2f}x)" for n in names if n in r["median_ms"]]
        for k, v in pairs.items():
            for i, (a, b) in enumerate(v):
                have = a in r["median_ms"] and b in r["median_ms"]
                # faster by more than the runs' 1% noise at every shape
                wins[k][i] &= have and best_device_time(r, a) < best_device_time(r, b) * 0.99
        frac = fraction(r, "ours_sync_free")[0]
        print(f"  {r['shape']} {r['dtype']}: default {base:.4f} ms ({fmt(frac)} of a same-size copy; bar "
              f"{fmt(MERGE_BAR)}: {'met' if frac is not None and frac >= MERGE_BAR else 'not met'}); " + ", ".join(parts))
    t_lb, t_sf = tests_ok(failures, "lookback"), tests_ok(failures, "sync_free")
    print(f"  tests with 'lookback' in their id: {t_lb}; with 'sync_free': {t_sf}")
    lb = any(wins["lookback"])
    print(f"  -> look-back: {'make it the default (merge_cuda_lookback in csrc/ops/merge_tokens_checks.cpp)' if lb and t_lb == 'passed' else 'keep it a variant'}")
    l16 = any(wins["loads16"])
    print(f"  -> 16 loads: {'make it the default (merge_cuda_flat_loads in csrc/ops/merge_tokens_checks.cpp)' if l16 and t_sf == 'passed' else 'keep 8'}")


def upload_decision(results, failures):
    """The image processor's upload="overlapped" (2 MiB pieces, each transfer under the host's
    staging of the next) against the default "pinned" (all staged, then one transfer): by call
    time, since what it hides is the host's copy."""
    def against_torchvision(r, a, b):
        tv = r["median_ms"].get("transformers_torchvision")
        return f"; vs transformers' torchvision processor {tv / a:.1f}x -> {tv / b:.1f}x" if tv else ""
    variant_decision(
        results, failures, "ours_overlapped",
        'image_processor upload="overlapped" (default "pinned": ImageProcessor in interleave/hf.py)', "upload",
        "overlapped upload", 'make it the default (upload="overlapped" in ImageProcessor/VideoProcessor and from_hf)',
        "keep pinned", op="image_processor", time=lambda r, name: r["median_ms"][name], note=against_torchvision)


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    report = json.load(open(argv[0]))
    failures = load_failures(argv[1] if len(argv) > 1 else None)
    env = report.get("environment", {})
    print(f"run: {env.get('gpu')} commit {env.get('commit')} torch {env.get('torch')}; "
          f"CUDA tests passed: {env.get('cuda_tests_passed')}")
    results = report.get("results", [])
    skipped = env.get("preflight_skipped", [])
    if skipped:
        print(f"preflight (bench/gpu_preflight.py, preflight.log) ruled out: {', '.join(skipped)} -> keep those off")
    bars(results)
    anyres_decision(results, failures)
    anyres_rows4_decision(results, failures)
    anyres_imma_decision(results, failures)
    merge_sync_free_decision(results, failures)
    wgmma_decision(results, failures)
    cublaslt_decision(results, failures)
    upload_decision(results, failures)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
