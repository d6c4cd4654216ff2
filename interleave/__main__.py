"""`python -m interleave info|bench|generate|demo|train|profile`."""
from __future__ import annotations

import sys


def _installed_version(distribution: str):
    """The installed version of a package, read from its metadata (importing transformers or
    torchvision would cost seconds)."""
    from importlib import metadata
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def info() -> int:
    import torch

    from . import __version__, _extension, ops

    ext = _extension.module
    print(f"interleave {__version__}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    if ext is None:
        print(f"extension: not loaded: {_extension.unavailable_reason}")
    else:
        print(f"extension: {ext.__file__}")
        print(f"  built for torch {ext.torch_version}, "
              + (f"CUDA {ext.cuda_version}, arch list {ext.arch_list or '(torch default)'}"
                 if ext.with_cuda else "CPU kernels only (no CUDA)"))
    print("optional packages: " + "; ".join(f"{name} {_installed_version(name) or 'not installed'} ({why})" for name, why in (
        ("transformers", "drop-in patches, the model, baselines"), ("torchvision", "the torchvision-processor baseline"),
        ("av", "video files in generate/train"), ("triton", "the CUDA linear_cross_entropy kernel"))))
    print("backends (which implementation a tensor on each device uses):")
    for op in ops.OPS:
        print(f"  {op:20s} cpu:  {ops.backend(op, 'cpu')}")
        print(f"  {'':20s} cuda: {ops.backend(op, 'cuda')}")
    if ext is not None:
        from .ops.anyres_tiles import cpu_simd_level, cpu_simd_supported
        print(f"CPU anyres_tiles loops: {cpu_simd_level()} (this CPU supports up to {cpu_simd_supported()}; "
              "INTERLEAVE_CPU_SIMD=generic|avx2|avx512 to cap)")
    if ext is not None and ext.with_cuda:
        # From the build's arch list, without initializing CUDA.
        sm90a = "9.0a" in ext.arch_list.replace(";", " ").split()
        print("CUDA patch_embed GEMM (bf16/fp16 outputs, cuda_gemm('auto')): our im2col + cuBLAS at every size "
              "(position embedding as cuBLASLt's C operand below 4096 tokens, copied first from there); "
              + ("the wgmma kernel (this build has sm_90a) and the mma kernel as variants" if sm90a
                 else "the mma kernel as a variant (no sm_90a in this build: TORCH_CUDA_ARCH_LIST with 9.0a adds the wgmma kernel)"))
        from .ops.patch_embed import cublaslt_status
        lt = cublaslt_status()
        print("CUDA patch_embed cuBLAS path: " + (
            "cuBLASLt loads (position embedding as a batched GEMM's shared C operand where auto asks)" if not lt
            else f"position embedding always copied into the output first (cuBLASLt unavailable: {lt})"))
        lookback = _extension.native_setting_value("_set_merge_lookback")
        print("CUDA merge_tokens sync-free path: " + (
            "one launch, decoupled look-back (INTERLEAVE_MERGE_LOOKBACK=1)" if lookback
            else "one launch, each block counting the ids before its chunk, up to 8192 positions; "
                 "the count kernel first beyond (INTERLEAVE_MERGE_LOOKBACK=1: a decoupled look-back at any length)"))
        print("CUDA anyres_tiles coefficients: " + (
            "uploaded once per arena key and device, reused by later calls"
            if _extension.native_setting_value("_set_anyres_arena_cache")
            else "uploaded every call (INTERLEAVE_ANYRES_ARENA_CACHE=0)"))
        print("off by default (measured slower on an H100, c0e6c19): anyres_tiles tensor-core passes "
              "(interleave.ops.anyres_tiles.cuda_tensor_cores())")
        imma = _extension.native_setting_value("_set_anyres_imma")
        fused = _extension.native_setting_value("_set_anyres_fused")
        print("CUDA anyres_tiles pass 1 on integer tensor cores: " + (
            "on (INTERLEAVE_ANYRES_IMMA=1)" if imma
            else "off until a GPU run has timed it (interleave.ops.anyres_tiles.cuda_integer_tensor_cores(), "
                 "INTERLEAVE_ANYRES_IMMA=1)")
            + ("; the vertical pass fused into its blocks" if fused
               else "; the intermediate in global memory (cuda_fused_passes(False))")
            + ("; source rows staged with cp.async (INTERLEAVE_ANYRES_IMMA_STAGED=1)"
               if _extension.native_setting_value("_set_anyres_imma_staged")
               else "; source rows read straight from global memory (cuda_integer_staged_rows() stages them)"))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = "usage: python -m interleave {info,bench,generate,demo,train,profile} [options]   (COMMAND --help for its options)"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "info":
        return info()
    if command == "bench":
        from . import bench
        return bench.main(rest)
    if command == "train":
        from . import train
        return train.main(rest)
    if command in ("generate", "demo", "profile"):
        from . import cli
        return {"generate": cli.generate_main, "demo": cli.demo_main, "profile": cli.profile_main}[command](rest)
    print(f"unknown command {command!r}\n{usage}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
