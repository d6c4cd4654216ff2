"""Runs each CUDA path that has never run on a GPU once, in its own process, before bench/gpu_check.sh
times and tests everything in one process each.

A new kernel that faults (illegal instruction, misaligned address) leaves a sticky CUDA error: every
later CUDA call in that process fails, so one bad variant would cost the whole benchmark run (and
the rest of the CUDA tests) on a machine lent for minutes. Here each path runs on a small real case
in a child process with a time limit and is compared with the default path; a path that fails is
named in the last line, `INTERLEAVE_SKIP_PATHS=a,b`, which gpu_check.sh exports so that the
benchmark leaves out its variant and the tests skip it (tests/conftest.py: skip_if_preflight_failed),
and the reason is in preflight.log.

    python3 bench/gpu_preflight.py            # the never-verified paths (UNVERIFIED), one child each
    python3 bench/gpu_preflight.py --all      # every path, verified ones included
    python3 bench/gpu_preflight.py --one NAME # one path in this process (what the children run)
    python3 bench/gpu_preflight.py --list [--all]  # the names it would check, comma-separated (no torch)
"""
import subprocess
import sys
import time

UNAVAILABLE = "unavailable: "


def _far_apart(got, want, tolerance, what):
    """None when got is finite and within tolerance * max|want| of want everywhere, else why not."""
    import torch
    if not torch.isfinite(got).all():
        return "non-finite output"
    diff = (got.float() - want.float()).abs().max().item()
    scale = want.float().abs().max().item()
    if diff > tolerance * scale:
        return f"differs from {what} by {diff:.3g} (values up to {scale:.3g})"
    return None


def check_wgmma():
    """patch_embed's Hopper wgmma kernel (cuda_gemm("wgmma")) against the mma kernel, SigLIP shape."""
    import torch
    from interleave.bench import patch_embed_inputs
    from interleave.ops import patch_embed
    from interleave.ops.patch_embed import cuda_gemm, wgmma_available
    if not torch.cuda.is_available():
        return UNAVAILABLE + "no CUDA GPU"
    if not wgmma_available():
        return UNAVAILABLE + "the build has no sm_90a target or the GPU is not compute capability 9.0"
    tiles, weight, bias, pos = patch_embed_inputs(3, 384, 14, 1152, torch.bfloat16, "cuda")
    with cuda_gemm("mma"):  # verified on the H100 since 404b09f; no im2col, no cuBLASLt
        want = patch_embed(tiles, weight, bias, pos)
    with cuda_gemm("wgmma"):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            got = patch_embed(tiles, weight, bias, pos)
            torch.cuda.synchronize()
    if not any("wgmma_patch_kernel" in e.name for e in prof.events()):
        return "the wgmma kernel did not run"
    # Both round to bf16 once; the operands differ (fp16 vs bf16 weights): a few bf16 steps apart.
    return _far_apart(got, want, 0.05, "the mma kernel")


def _anyres_against_default(setting):
    """anyres_tiles under `setting` against the default path, bitwise, on a 1080p and a 1411x1411
    image in three modes."""
    import torch
    from interleave.ops import anyres_tiles
    if not torch.cuda.is_available():
        return UNAVAILABLE + "no CUDA GPU"
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (1080, 1920, 3), generator=g, dtype=torch.uint8).cuda(),
              torch.randint(0, 256, (1411, 1411, 3), generator=g, dtype=torch.uint8).cuda()]
    for mode in ("anyres_max_9", "llava", "pad"):
        want = anyres_tiles(images, mode).tiles
        with setting():
            got = anyres_tiles(images, mode).tiles
        torch.cuda.synchronize()
        if not torch.equal(got, want):
            bad = (got != want).sum().item()
            return f"{mode}: {bad} of {want.numel()} bytes differ from the default path"
    return None


def check_anyres_mma():
    """anyres_tiles with pass 1 on tensor cores (and the fused passes) against the default path, bitwise."""
    from interleave.ops.anyres_tiles import cuda_tensor_cores
    return _anyres_against_default(cuda_tensor_cores)


def check_anyres_rows4():
    """anyres_tiles' SIMT pass 1 with 4 intermediate rows per block (cuda_simt_rows(4)) against the
    default path, bitwise."""
    from interleave.ops.anyres_tiles import cuda_simt_rows
    return _anyres_against_default(lambda: cuda_simt_rows(4))


def check_anyres_imma():
    """anyres_tiles' pass 1 on integer tensor cores (cuda_integer_tensor_cores()) against the default
    path, bitwise: with the vertical pass fused into its blocks, and without."""
    import contextlib
    from interleave.ops.anyres_tiles import cuda_fused_passes, cuda_integer_tensor_cores
    failed = _anyres_against_default(cuda_integer_tensor_cores)
    if failed:
        return failed if failed.startswith(UNAVAILABLE) else "fused: " + failed

    @contextlib.contextmanager
    def unfused():
        with cuda_integer_tensor_cores(), cuda_fused_passes(False):
            yield
    failed = _anyres_against_default(unfused)
    return "unfused: " + failed if failed else None


def check_anyres_imma_staged():
    """anyres_tiles' integer pass 1 with each warp's source rows staged by 16-byte cp.async
    (cuda_integer_staged_rows()) against the default path, bitwise (the 1080p image stages; the
    1411-wide one, whose rows are not 16-byte aligned, loads as without it)."""
    import contextlib
    from interleave.ops.anyres_tiles import cuda_integer_staged_rows, cuda_integer_tensor_cores

    @contextlib.contextmanager
    def staged():
        with cuda_integer_tensor_cores(), cuda_integer_staged_rows():
            yield
    return _anyres_against_default(staged)


def check_anyres_arena_cache():
    """anyres_tiles with its coefficient arena's device copy kept for later calls (the default:
    anyres_cuda_arena_cache()) against uploading it every call, bitwise: the same sizes three times
    (a miss, then hits) on a side stream and on the default stream, on the SIMT and integer paths."""
    import torch
    from interleave import _extension
    from interleave.ops import anyres_tiles
    from interleave.ops.anyres_tiles import cuda_integer_tensor_cores
    if not torch.cuda.is_available():
        return UNAVAILABLE + "no CUDA GPU"
    g = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (1080, 1920, 3), generator=g, dtype=torch.uint8).cuda(),
              torch.randint(0, 256, (733, 1411, 3), generator=g, dtype=torch.uint8).cuda()]
    side = torch.cuda.Stream()
    for imma in (False, True):
        with cuda_integer_tensor_cores(imma):
            with _extension.native_setting("_set_anyres_arena_cache", False):
                want = anyres_tiles(images, "anyres_max_9").tiles
            for stream in (side, side, torch.cuda.current_stream()):
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    got = anyres_tiles(images, "anyres_max_9").tiles
                torch.cuda.current_stream().wait_stream(stream)
                torch.cuda.synchronize()
                if not torch.equal(got, want):
                    return (f"integer={imma}: {(got != want).sum().item()} of {want.numel()} bytes differ from "
                            "the uploaded-every-call path")
    return None


def check_wgmma_staged():
    """The wgmma kernel's staged variant (cuda_gemm("wgmma_staged"): each tile's pixels copied into
    shared memory with cp.async) against the gathered one: the same fp16 operands and MMAs in the
    same order, so the same output bit for bit."""
    import torch
    from interleave.bench import patch_embed_inputs
    from interleave.ops import patch_embed
    from interleave.ops.patch_embed import cuda_gemm, wgmma_available
    if not torch.cuda.is_available():
        return UNAVAILABLE + "no CUDA GPU"
    if not wgmma_available():
        return UNAVAILABLE + "the build has no sm_90a target or the GPU is not compute capability 9.0"
    tiles, weight, bias, pos = patch_embed_inputs(3, 384, 14, 1152, torch.bfloat16, "cuda")
    with cuda_gemm("wgmma"):
        want = patch_embed(tiles, weight, bias, pos)
    with cuda_gemm("wgmma_staged"):
        got = patch_embed(tiles, weight, bias, pos)
    torch.cuda.synchronize()
    if not torch.equal(got, want):
        return f"{(got != want).sum().item()} of {want.numel()} outputs differ from the gathered kernel's"
    return None


def _patch_embed_case(n=6):
    import torch
    from interleave.bench import patch_embed_inputs
    return patch_embed_inputs(n, 384, 14, 1152, torch.bfloat16, "cuda")


def check_im2col_staged():
    """The cuBLAS path's im2col of uint8 tiles staged through shared memory against the generic
    kernel: the same A, so the same GEMM output bit for bit (cuda_gemm("cublas_copy"))."""
    import torch
    from interleave import _extension
    from interleave.ops import patch_embed
    from interleave.ops.patch_embed import cuda_gemm
    if not torch.cuda.is_available():
        return UNAVAILABLE + "no CUDA GPU"
    tiles, weight, bias, pos = _patch_embed_case()
    with cuda_gemm("cublas_copy"):
        with _extension.native_setting("_set_patch_embed_im2col_staged", False):
            want = patch_embed(tiles, weight, bias, pos)
        with _extension.native_setting("_set_patch_embed_im2col_staged", True):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                got = patch_embed(tiles, weight, bias, pos)
                torch.cuda.synchronize()
    if not any("im2col_u8_kernel" in e.name for e in prof.events()):
        return "the staged im2col kernel did not run"
    if not torch.equal(got, want):
        return f"{(got != want).sum().item()} of {want.numel()} outputs differ from the generic im2col's"
    return None


def _cublaslt_unavailable():
    """UNAVAILABLE + why where the cuBLASLt path cannot run here (no GPU, no cuBLASLt), else None."""
    import torch
    from interleave.ops.patch_embed import cublaslt_status
    if not torch.cuda.is_available():
        return UNAVAILABLE + "no CUDA GPU"
    status = cublaslt_status()
    return UNAVAILABLE + status if status else None


def check_cublas_lt():
    """The position embedding as a batched cuBLASLt GEMM's shared C operand (cuda_gemm("cublas"),
    auto's path below 4096 tokens) against the copy + addmm path (cuda_gemm("cublas_copy"))."""
    import torch
    from interleave.ops import patch_embed
    from interleave.ops.patch_embed import cuda_gemm
    unavailable = _cublaslt_unavailable()
    if unavailable:
        return unavailable
    tiles, weight, bias, pos = _patch_embed_case(8)
    with cuda_gemm("cublas_copy"):
        want = patch_embed(tiles, weight, bias, pos)
    with cuda_gemm("cublas"):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            got = patch_embed(tiles, weight, bias, pos)
            torch.cuda.synchronize()
    if any("broadcast_rows" in e.name for e in prof.events()):
        return UNAVAILABLE + "cuBLASLt refused the SigLIP problem (the path fell back to copy + addmm)"
    # Same operands and one rounding to bf16 each; only the GEMMs' summation order differs.
    return _far_apart(got, want, 0.02, "the copy + addmm path")


def check_cublas_tune():
    """The cuBLASLt GEMM with its algorithm tuned per shape (cublaslt_tune, a variant) against the
    heuristic's first choice: the tuning call itself (8 candidates timed between events) and a
    second call on the kept algorithm."""
    import torch
    from interleave.ops import patch_embed
    from interleave.ops.patch_embed import cublaslt_tune, cuda_gemm
    unavailable = _cublaslt_unavailable()
    if unavailable:
        return unavailable
    tiles, weight, bias, pos = _patch_embed_case(8)
    with cuda_gemm("cublas"):
        want = patch_embed(tiles, weight, bias, pos)
        with cublaslt_tune(True):
            got = [patch_embed(tiles, weight, bias, pos) for _ in range(2)]
    torch.cuda.synchronize()
    for out in got:
        reason = _far_apart(out, want, 0.02, "the untuned cuBLASLt GEMM")
        if reason:
            return reason
    return None


def _merge_against_default(*settings):
    """merge_tokens' sync-free path under `settings` against the default path (count kernel, host
    check): the benchmark's shape (256 chunks) and 1022 chunks, three launches in a row."""
    import contextlib
    import torch
    from interleave.ops import merge_tokens
    if not torch.cuda.is_available():
        return UNAVAILABLE + "no CUDA GPU"
    g = torch.Generator().manual_seed(0)
    for B, L, D in ((1, 8192, 1024), (4, 70000, 16)):
        ids = torch.randint(0, 1000, (B, L), generator=g)
        mask = torch.rand(B, L, generator=g) < 0.9
        ids[mask] = 5000  # the placeholder, outside the table as real ones can be
        K = int(mask.sum())
        ids, weight, visual = ids.cuda(), torch.randn(1000, D, device="cuda"), torch.randn(K, D, device="cuda")
        want = merge_tokens(ids, weight, visual, 5000)
        with contextlib.ExitStack() as stack:
            for setting in settings:
                stack.enter_context(setting)
            got = [merge_tokens(ids, weight, visual, 5000, num_placeholders=K) for _ in range(3)]
        torch.cuda.synchronize()
        for i, out in enumerate(got):
            if not torch.equal(out, want):
                return f"B={B} L={L} D={D}, launch {i}: {(out != want).any(-1).sum().item()} rows differ from the default path's"
    return None


def check_merge_lookback():
    """merge_tokens' sync-free one launch with the decoupled look-back (cuda_lookback; a variant,
    the whole block looking back since the session after de8175c), on one look-back state three
    times. A block that waited forever on another would hang here, under the parent's time limit."""
    from interleave.ops.merge_tokens import cuda_lookback
    return _merge_against_default(cuda_lookback(True))


def check_merge_loads16():
    """merge_tokens' row copy with 16 loads in flight per thread (cuda_flat_loads(16), a variant)."""
    from interleave.ops.merge_tokens import cuda_flat_loads
    return _merge_against_default(cuda_flat_loads(16))


# Each name is also what gpu_check.sh turns off when it fails: the variants are left out of the
# benchmark and their tests skipped; the paths auto takes are switched off for the whole run
# (INTERLEAVE_IM2COL_STAGED=0 / INTERLEAVE_CUBLASLT=0 put the earlier cuBLAS path back).
CHECKS = {"wgmma": check_wgmma, "wgmma_staged": check_wgmma_staged, "anyres_mma": check_anyres_mma,
          "im2col_staged": check_im2col_staged, "cublas_lt": check_cublas_lt, "merge_lookback": check_merge_lookback,
          "merge_loads16": check_merge_loads16, "cublas_tune": check_cublas_tune, "anyres_rows4": check_anyres_rows4,
          "anyres_imma": check_anyres_imma, "anyres_imma_staged": check_anyres_imma_staged,
          "anyres_arena_cache": check_anyres_arena_cache}
# What a run checks by default: the paths no GPU has run yet. The others passed on an H100 at
# 12ae393 (bench/results/2026-11-27-H100-12ae393-preflight.txt) and run with --all; the look-back's
# first version passed at de8175c, the current one (the whole block looking back) has not run.
UNVERIFIED = ["merge_lookback", "merge_loads16", "cublas_tune", "anyres_rows4", "anyres_imma", "anyres_imma_staged",
              "anyres_arena_cache"]


def run_one(name):
    """0: ok; 2: the path does not apply here (skipped, not a failure); 1 or a crash: failed."""
    reason = CHECKS[name]()
    if reason is None:
        print(f"{name}: ok")
        return 0
    if reason.startswith(UNAVAILABLE):
        print(f"{name}: {reason}")
        return 2
    print(f"{name}: FAILED: {reason}")
    return 1


def main(argv):
    if len(argv) == 2 and argv[0] == "--one":
        return run_one(argv[1])
    names = list(CHECKS) if "--all" in argv else UNVERIFIED
    if "--list" in argv:  # what gpu_preflight.sh rules out when a run gives no verdict line
        print(",".join(names))
        return 0
    failed = []
    for name in names:
        t0 = time.time()
        try:
            r = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True, timeout=90)
            out = (r.stdout + r.stderr).strip().splitlines()
            line = next((x for x in reversed(out) if x.startswith(f"{name}:")), None)
            if r.returncode == 0 and line is not None and line.endswith("ok"):
                print(f"{line} ({time.time() - t0:.0f}s)")
                continue
            if r.returncode == 2 and line is not None:
                print(line)
            else:
                print(line or f"{name}: FAILED: exit status {r.returncode}")
                print("\n".join("    " + x for x in out[-15:]))
        except subprocess.TimeoutExpired:
            print(f"{name}: FAILED: no answer within 90 s (a hang?)")
        failed.append(name)
    print(f"INTERLEAVE_SKIP_PATHS={','.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
