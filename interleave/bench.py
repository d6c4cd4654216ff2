"""Benchmarks: every op against its references, timed in the same run.

`python -m interleave bench` runs the embedded default cases on every available device, prints a
table (shape, ours, reference, ratio, GB/s; TFLOP/s for GEMM-like ops) and writes JSON. Outputs are
checked against the reference: bitwise, or for floating-point ops (patch_embed) an error against a
float64 reference at most 2x the reference's own. The pytest-benchmark suites in bench/
time the same cases (this module is their single source of shapes and baselines).

Timing: medians. CPU: time.perf_counter around each call (outputs are fresh allocations, as in
real use). CUDA: CUDA events around each call, with the L2 flushed before it (a 256 MiB write) so
inputs never sit in cache.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

import torch

from . import __version__, _extension, reference
from .ops import merge_tokens

IMAGE_TOKEN_ID = 151646  # <image> of the llava-interleave-qwen checkpoints (REFERENCE.md section 8)


@dataclasses.dataclass
class Case:
    """One benchmark: `ours` and each baseline take no arguments and return the op's output."""
    op: str
    device: str
    shape: str
    dtype: str
    ours: Callable[[], torch.Tensor]
    baselines: dict[str, Callable[[], torch.Tensor]]
    bytes_moved: int  # bytes the op must read and write at least
    variants: dict[str, Callable[[], torch.Tensor]] = dataclasses.field(default_factory=dict)
    flops: int = 0  # floating-point operations of the op (GEMM-like ops), for TFLOP/s
    # Floating-point ops are not bitwise equal to their reference: `truth` computes a float64
    # reference, and the op passes when its error is at most 2x the reference's (DESIGN.md).
    truth: Optional[Callable[[], torch.Tensor]] = None


# ---- merge_tokens ------------------------------------------------------------------------------
def merge_tokens_inputs(B=1, L=8192, D=1024, K=7290, V=152000, dtype=torch.float32, device="cpu", seed=0):
    """Ten 27x27 images (K = 7290 placeholders) spread over an 8192-token prompt, random text ids
    from a Qwen-sized vocabulary, a random table and random visual rows (never zeros)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, V - 1000, (B, L), generator=g)
    per_row = [K // B + (1 if b < K % B else 0) for b in range(B)]
    for b, count in enumerate(per_row):
        input_ids[b, torch.randperm(L, generator=g)[:count]] = IMAGE_TOKEN_ID
    weight = torch.randn(V, D, generator=g, dtype=torch.float32).to(dtype)
    visual = torch.randn(K, D, generator=g, dtype=torch.float32).to(dtype)
    return input_ids.to(device), weight.to(device), visual.to(device)


def merge_tokens_cases(device: str, quick: bool = False, compile_reference: bool = True) -> list[Case]:
    configs = [(1024, torch.float32), (1024, torch.bfloat16), (4096, torch.float32), (4096, torch.bfloat16)]
    L, K, V = 8192, 7290, 152000
    if quick:
        configs, L, K, V = [(256, torch.float32)], 1024, 729, 4096
    compiled = torch.compile(reference.merge_tokens) if compile_reference else None
    cases = []
    for D, dtype in configs:
        ids, weight, visual = merge_tokens_inputs(L=L, D=D, K=K, V=V, dtype=dtype, device=device)
        n, es = ids.numel(), weight.element_size()
        moved = n * D * es + (n - K) * D * es + K * D * visual.element_size() + n * 8
        baselines = {
            "transformers": lambda i=ids, w=weight, v=visual: reference.merge_tokens(i, w, v, [IMAGE_TOKEN_ID]),
            "index_put": lambda i=ids, w=weight, v=visual: reference.merge_tokens_index_put(i, w, v, [IMAGE_TOKEN_ID]),
        }
        if compiled is not None:
            baselines["compiled"] = lambda i=ids, w=weight, v=visual: compiled(i, w, v, [IMAGE_TOKEN_ID])
        cases.append(Case(
            op="merge_tokens", device=device, shape=f"B=1 L={L} D={D} K={K}",
            dtype=str(dtype).replace("torch.", ""),
            ours=lambda i=ids, w=weight, v=visual: merge_tokens(i, w, v, IMAGE_TOKEN_ID),
            variants={"ours_sync_free": lambda i=ids, w=weight, v=visual, k=K: merge_tokens(
                i, w, v, IMAGE_TOKEN_ID, num_placeholders=k)},
            baselines=baselines, bytes_moved=moved))
    return cases


# ---- anyres_tiles -------------------------------------------------------------------------------
def _smooth_image(h: int, w: int, seed: int) -> torch.Tensor:
    """A photo-like uint8 image (gradients plus noise): resize costs do not depend on content,
    but equality checks on smooth data catch different errors than on pure noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 255, h).view(h, 1, 1)
    x = torch.linspace(0, 255, w).view(1, w, 1)
    base = torch.cat([x.expand(h, w, 1), y.expand(h, w, 1), ((x + y) / 2).expand(h, w, 1)], 2)
    noise = torch.randint(-20, 21, (h, w, 3), generator=g)
    return (base + noise).clamp(0, 255).to(torch.uint8)


def anyres_tiles_cases(device: str, quick: bool = False, compile_reference: bool = True) -> list[Case]:
    from .ops import anyres_tiles
    from .plan import plan_image
    try:
        import PIL  # noqa: F401  (the baseline)
    except ImportError:
        print("bench: Pillow is not installed; skipping anyres_tiles", file=sys.stderr)
        return []

    configs = [("1080x1920 anyres_max_9", [(1080, 1920)], "anyres_max_9"),
               ("1411x1411 anyres_max_9", [(1411, 1411)], "anyres_max_9"),
               ("16 frames 1080x1920 squash", [(1080, 1920)] * 16, "llava")]
    if quick:
        configs = [("300x500 anyres_max_9", [(300, 500)], "anyres_max_9")]
    cases = []
    for name, sizes, mode in configs:
        images = [_smooth_image(h, w, i).to(device) for i, (h, w) in enumerate(sizes)]
        plans = [plan_image(h, w, mode) for h, w in sizes]
        tiles = sum(p.num_patches for p in plans)
        moved = sum(h * w * 3 for h, w in sizes) + tiles * 384 * 384 * 3
        cpu_images = [im.cpu() for im in images]
        cases.append(Case(
            op="anyres_tiles", device=device, shape=f"{name} -> {tiles} tiles", dtype="uint8",
            ours=lambda ims=images, m=mode: anyres_tiles(ims, m).tiles,
            # Pillow's resize + paste + crop, as transformers' PIL processors tile (no normalization).
            baselines={"pillow": lambda ims=cpu_images, ps=plans: reference.anyres_tiles(ims, ps)},
            bytes_moved=moved))
    return cases


# ---- patch_embed --------------------------------------------------------------------------------
def patch_embed_inputs(N=16, S=384, p=14, C=1152, dtype=torch.float32, device="cpu", seed=0):
    """Random uint8 tiles [N, S, S, 3] and SigLIP-shaped random parameters (weights ~ 1/sqrt(K),
    position embedding ~ N(0, 1)): the GEMM's cost does not depend on the values."""
    g = torch.Generator().manual_seed(seed)
    T = (S // p) ** 2
    tiles = torch.randint(0, 256, (N, S, S, 3), generator=g, dtype=torch.uint8)
    weight = torch.randn(C, 3, p, p, generator=g) / (3 * p * p) ** 0.5
    bias = torch.randn(C, generator=g) * 0.1
    pos = torch.randn(T, C, generator=g)
    return tiles.to(device), weight.to(device, dtype), bias.to(device, dtype), pos.to(device, dtype)


def patch_embed_cases(device: str, quick: bool = False, compile_reference: bool = True) -> list[Case]:
    """patch_embed from uint8 tiles against the reference path from the same tiles (the processor's
    normalization + SiglipVisionEmbeddings: normalize, conv2d, flatten/transpose, add), the conv as
    unfold + linear, and torch.compile of the reference. Variant: ours from HF pixel_values."""
    from .ops import patch_embed
    configs = [(N, dtype) for dtype in (torch.float32, torch.bfloat16) for N in (1, 16, 64)]
    S, p, C = 384, 14, 1152
    if quick:
        configs, S, C = [(2, torch.float32)], 28, 32
    compiled = torch.compile(reference.patch_embed_tiles) if compile_reference else None
    cases = []
    for N, dtype in configs:
        tiles, weight, bias, pos = patch_embed_inputs(N, S, p, C, dtype, device)
        pixel_values = reference.normalize_tiles(tiles)
        T, K = pos.shape[0], 3 * p * p
        es = weight.element_size()
        moved = tiles.numel() + weight.numel() * es + pos.numel() * es + N * T * C * es
        baselines = {
            "transformers": lambda a=(tiles, weight, bias, pos): reference.patch_embed_tiles(*a),
            "unfold_linear": lambda a=(tiles, weight, bias, pos): reference.patch_embed_unfold(*a),
        }
        if compiled is not None:
            baselines["compiled"] = lambda a=(tiles, weight, bias, pos): compiled(*a)
        cases.append(Case(
            op="patch_embed", device=device, shape=f"N={N} S={S} p={p} C={C}",
            dtype=str(dtype).replace("torch.", ""),
            ours=lambda a=(tiles, weight, bias, pos): patch_embed(*a),
            variants={"ours_pixel_values": lambda a=(pixel_values, weight, bias, pos): patch_embed(*a)},
            baselines=baselines, bytes_moved=moved, flops=2 * N * T * K * C,
            truth=lambda a=(tiles, weight, bias, pos): reference.patch_embed(
                (a[0].permute(0, 3, 1, 2).double() / 127.5 - 1), *(t.double() for t in a[1:]))))
    return cases


# ---- the image processor (anyres_tiles + normalization + batching) ---------------------------------
def _photo(h: int, w: int) -> "np.ndarray":
    """scikit-image's astronaut resized to (h, w) with Pillow, or a smooth synthetic image when
    scikit-image is not installed (GPU machines)."""
    import numpy as np
    try:
        from skimage import data
        from PIL import Image
        return np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.BICUBIC))
    except ImportError:
        return _smooth_image(h, w, 0).numpy()


def image_processor_cases(device: str, quick: bool = False, compile_reference: bool = True) -> list[Case]:
    """interleave.hf.ImageProcessor against transformers' PIL processor (the reference: equal
    pixel_values) and its torchvision-backend processor (when torchvision is installed)."""
    from .hf import ImageProcessor
    try:
        from transformers.models.llava_onevision import image_processing_pil_llava_onevision as ov_pil
        from transformers.models.siglip import image_processing_pil_siglip as sg_pil
    except ImportError:
        return []
    siglip = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    configs = [("OneVision 1080x1920 -> 16 tiles", ov_pil.LlavaOnevisionImageProcessorPil(**siglip),
                "LlavaOnevisionImageProcessor", [_photo(1080, 1920)]),
               ("SigLIP 16 frames 1080x1920", sg_pil.SiglipImageProcessorPil(size={"height": 384, "width": 384}, **siglip),
                "SiglipImageProcessor", [_photo(1080, 1920)] * 16)]
    if quick:
        configs = [("OneVision 300x500", configs[0][1], configs[0][2], [_photo(300, 500)])]
    cases = []
    for name, hf_pil, tv_name, images in configs:
        ours = ImageProcessor.from_hf(hf_pil, device=device)
        baselines = {"transformers_pil": lambda p=hf_pil, ims=images: p(ims, return_tensors="pt")["pixel_values"]}
        try:  # the torchvision backend (transformers' default processor class)
            import importlib
            import importlib.util
            if importlib.util.find_spec("torchvision") is None:
                raise ImportError("torchvision is not installed")  # the class imports, then fails on call
            module = importlib.import_module(type(hf_pil).__module__.replace("image_processing_pil_", "image_processing_"))
            hf_tv = getattr(module, tv_name)(**{k: getattr(hf_pil, k) for k in ("image_mean", "image_std")},
                                             **({"size": {"height": 384, "width": 384}} if "Siglip" in tv_name else {}))
            kwargs = {"device": device} if device == "cuda" else {}
            baselines["transformers_torchvision"] = lambda p=hf_tv, ims=images, kw=kwargs: p(
                ims, return_tensors="pt", **kw)["pixel_values"]
        except (ImportError, AttributeError, TypeError):
            pass
        probe = ours(images)["pixel_values"]
        out_bytes = probe.numel() * probe.element_size()
        cases.append(Case(
            op="image_processor", device=device, shape=name, dtype="float32",
            ours=lambda p=ours, ims=images: p(ims)["pixel_values"],
            baselines=baselines, bytes_moved=sum(im.nbytes for im in images) + out_bytes))
    return cases


CASES: dict[str, Callable[..., list[Case]]] = {"merge_tokens": merge_tokens_cases,
                                               "anyres_tiles": anyres_tiles_cases,
                                               "patch_embed": patch_embed_cases,
                                               "image_processor": image_processor_cases}


# ---- timing ------------------------------------------------------------------------------------
class _Flush:
    def __init__(self, device):
        self.buf = torch.empty(256 << 20, dtype=torch.uint8, device=device) if device == "cuda" else None

    def __call__(self):
        if self.buf is not None:
            self.buf.zero_()


def time_fn(fn: Callable[[], object], device: str, reps: int, warmup: int = 3,
            budget_s: float = 4.0) -> float:
    """Median seconds per call, over `reps` calls or as many as fit in `budget_s` (at least 5), so
    slow baselines (Pillow on 16 frames) do not dominate a run."""
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    first = time.perf_counter() - t0
    reps = max(5, min(reps, int(budget_s / max(first, 1e-9))))
    for _ in range(warmup - 1):
        fn()
    times = []
    if device == "cuda":
        flush = _Flush(device)
        for _ in range(reps):
            flush()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: str, nbytes: int = 1 << 30) -> float:
    """Device-copy bandwidth in GB/s (read + write counted), the ceiling for data-movement ops."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, reps=20)
    return 2 * nbytes / t / 1e9


def _max_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    if ours.shape != ref.shape:
        return float("inf")
    return float((ours.double() - ref.double()).abs().max()) if ours.numel() else 0.0


def run_case(case: Case, reps: int) -> dict:
    reference_name = next(iter(case.baselines))  # the first baseline is the semantic reference
    out, ref = case.ours(), case.baselines[reference_name]()
    result = {
        "op": case.op, "device": case.device, "shape": case.shape, "dtype": case.dtype,
        "reference": reference_name, "bitwise_equal": bool(torch.equal(out.cpu(), ref.cpu())), "max_abs_error": _max_error(out.cpu(), ref.cpu()),
        "bytes_moved": case.bytes_moved, "median_ms": {},
    }
    if case.truth is not None:
        # Error against float64: ours at most 2x the reference's (floor: one rounding of the
        # output's largest value in the output dtype, for when the reference happens to be exact).
        truth = case.truth().cpu()
        err_ours, err_ref = _max_error(out.cpu(), truth), _max_error(ref.cpu(), truth)
        floor = float(truth.abs().max()) * torch.finfo(out.dtype).eps / 2
        result.update(error_vs_float64=err_ours, reference_error_vs_float64=err_ref,
                      within_2x_reference_error=err_ours <= 2 * max(err_ref, floor))
        del truth
    del out, ref
    for name, fn in {"ours": case.ours, **case.variants, **case.baselines}.items():
        result["median_ms"][name] = time_fn(fn, case.device, reps) * 1e3
    ms = result["median_ms"]
    result["ours_gbps"] = case.bytes_moved / (ms["ours"] / 1e3) / 1e9
    result["variants_gbps"] = {name: case.bytes_moved / (ms[name] / 1e3) / 1e9 for name in case.variants}
    result["speedup_vs"] = {name: ms[name] / ms["ours"] for name in case.baselines}
    if case.flops:
        result["flops"] = case.flops
        result["tflops"] = {name: case.flops / (t / 1e3) / 1e12 for name, t in ms.items()}
    return result


def result_ok(r: dict) -> bool:
    """Bitwise equal to the reference, or (floating-point ops) within 2x its float64 error."""
    return bool(r["bitwise_equal"] or r.get("within_2x_reference_error", False))


# ---- reporting -----------------------------------------------------------------------------------
def environment(devices: list[str]) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "interleave": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "commit": _commit(), "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "extension": _extension.backend_reason("cpu"),
    }
    if "cuda" in devices:
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["cuda_extension"] = _extension.backend_reason("cuda")
    return env


def _commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("INTERLEAVE_COMMIT", "unknown")


def format_table(results: list[dict]) -> str:
    baselines = list(dict.fromkeys(b for r in results for b in r["speedup_vs"]))
    with_flops = any("tflops" in r for r in results)
    head = ["op", "device", "shape", "dtype", "ours ms", "GB/s"] + (["TFLOP/s"] if with_flops else [])
    head += [f"{b} ms (ratio)" for b in baselines] + ["equal"]
    rows = [tuple(head)]
    for r in results:
        ms = r["median_ms"]
        row = [r["op"], r["device"], r["shape"], r["dtype"], f"{ms['ours']:.3f}", f"{r['ours_gbps']:.1f}"]
        if with_flops:
            row.append(f"{r['tflops']['ours']:.2f}" if "tflops" in r else "-")
        row += [f"{ms[b]:.3f} ({r['speedup_vs'][b]:.2f}x)" if b in ms else "-" for b in baselines]
        if r["bitwise_equal"]:
            row.append("yes")
        elif "within_2x_reference_error" in r:
            row.append(f"{'ok' if r['within_2x_reference_error'] else 'FAIL'}: err {r['error_vs_float64']:.1e} "
                       f"(ref {r['reference_error_vs_float64']:.1e}) vs float64")
        else:
            row.append(f"err {r['max_abs_error']:.2e}")
        rows.append(tuple(row))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(devices: list[str], ops: list[str], quick: bool, reps: int, compile_reference: bool,
        progress=print, checkpoint: Callable[[dict], None] = lambda report: None) -> dict:
    """Runs every case; `checkpoint(report)` after each one, so a run cut short keeps its results."""
    report = {"environment": environment(devices), "results": []}
    for device in devices:
        if device == "cuda":
            report["environment"]["copy_gbps"] = copy_bandwidth("cuda")
        for op in ops:
            cases = CASES[op](device, quick=quick, compile_reference=compile_reference)
            for i, case in enumerate(cases, 1):
                progress(f"[{op} {device} {i}/{len(cases)}] {case.shape} {case.dtype} ...")
                result = run_case(case, reps)
                if device == "cuda":
                    copy = report["environment"]["copy_gbps"]
                    result["fraction_of_copy_bw"] = result["ours_gbps"] / copy
                    result["variants_fraction_of_copy_bw"] = {
                        k: v / copy for k, v in result["variants_gbps"].items()}
                report["results"].append(result)
                checkpoint(report)
            del cases
    return report


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m interleave bench", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    p.add_argument("--op", action="append", choices=sorted(CASES), help="default: every op")
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per implementation")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    p.add_argument("--json", default="interleave-bench.json", help="where to write the results")
    p.add_argument("--tests-rc", type=int, default=None, help=argparse.SUPPRESS)  # gpu_check.sh
    args = p.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            p.error("--device cuda: no CUDA device is visible")
        devices.remove("cuda")
    reps = args.reps or (5 if args.quick else 30)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)

    def write(report):
        if args.tests_rc is not None:
            report["environment"]["cuda_tests_passed"] = args.tests_rc == 0
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)

    report = run(devices, args.op or sorted(CASES), args.quick, reps, not args.no_compile,
                 progress=lambda s: print(s, file=sys.stderr, flush=True), checkpoint=write)
    write(report)
    env = report["environment"]
    print(f"interleave {env['interleave']}, torch {env['torch']}, commit {env['commit']}, "
          f"{env['threads']} CPU threads" + (f", {env['gpu']} (copy {env['copy_gbps']:.0f} GB/s)"
                                             if "gpu" in env else ""))
    print(format_table(report["results"]))
    print(f"wrote {args.json}")
    return 0 if all(result_ok(r) for r in report["results"]) else 1
