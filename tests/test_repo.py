"""Promises of the repository itself: the README's commands, the CLI, the benchmark JSON."""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup, flags=re.S)


def test_readme_has_exactly_two_setup_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("python -m interleave bench")
    assert commands[1].endswith("python -m pytest -q")


def test_ci_runs_the_readme_test_command():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert _readme_commands()[1] in ci.splitlines()


def test_ci_reruns_the_transformers_tests_under_older_releases():
    """.ci/run reruns the tests that touch transformers under 4.57 and 5.0
    (tests/transformers_compat_tests.txt): every line names a test file, or a test function in it,
    that exists."""
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "compat_run 4.57.6 " in ci and "compat_run 5.0.0 " in ci and "tests/transformers_compat_tests.txt" in ci
    lines = open(os.path.join(ROOT, "tests", "transformers_compat_tests.txt")).read().split()
    assert lines
    for line in lines:
        path, _, name = line.partition("::")
        source = open(os.path.join(ROOT, path)).read()
        assert not name or re.search(rf"^def {re.escape(name)}\(", source, flags=re.M), line


def test_bench_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "interleave", "bench", "--device", "cpu", "--quick",
                        "--no-compile", "--reps", "2", "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["environment"]["torch"] and report["environment"]["threads"] == 1
    results = {r["op"]: r for r in report["results"]}
    assert set(results) == {"merge_tokens", "anyres_tiles", "image_processor", "pack_tokens", "model",
                            "linear_cross_entropy", "patch_embed"}
    assert all(r["matches_reference"] and r["ours_gbps"] > 0 for r in report["results"])
    # what each case and each op's inputs took (the GPU check's budget is planned with them)
    assert all(r["seconds"] >= 0 for r in report["results"]) and sum(r["seconds"] for r in report["results"]) > 0
    assert set(report["environment"]["setup_seconds"]) == {f"{op} cpu" for op in results}
    # patch_embed is floating-point math: checked against float64 (within 2x the reference's error).
    assert results["patch_embed"]["within_2x_reference_error"] and results["patch_embed"]["tflops"]["ours"] > 0
    assert results["merge_tokens"]["bitwise_equal"] and results["anyres_tiles"]["bitwise_equal"]
    lce = results["linear_cross_entropy"]
    assert set(lce["peak_memory_bytes"]) == {"ours", "pytorch"}
    assert 0 < lce["peak_memory_bytes"]["ours"] < lce["peak_memory_bytes"]["pytorch"]
    assert set(results["merge_tokens"]["median_ms"]) >= {"ours", "ours_sync_free", "transformers", "index_put"}
    assert results["anyres_tiles"]["reference"] == "pillow"
    # Lower instruction-set levels, timed as variants where this CPU has better ones: same bytes.
    assert all(results[op].get("variants_bitwise_equal", {}).get("ours_avx2", True)
               for op in ("anyres_tiles", "image_processor"))
    assert "ratio" in r.stdout and "merge_tokens" in r.stdout and "anyres_tiles" in r.stdout
    assert "patch_embed" in r.stdout and "TFLOP/s" in r.stdout


def test_every_subpackage_is_packaged():
    """A non-editable install (pip install ., a wheel) ships every package directory: the list once
    named two and left interleave.triton_kernels (the CUDA linear_cross_entropy kernel) out."""
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated pyproject key fails here, not in a 2027 build
        dist = apply_configuration(Distribution(), os.path.join(ROOT, "pyproject.toml"))
    on_disk = {os.path.relpath(d, ROOT).replace(os.sep, ".") for d, _, files in os.walk(os.path.join(ROOT, "interleave"))
               if "__init__.py" in files}
    assert on_disk >= {"interleave", "interleave.ops", "interleave.triton_kernels"}
    assert set(dist.packages) == on_disk


def test_time_fn_call_counts():
    """time_fn's calls: the first (sizes the run), warmup - 1 more, then max(min_reps, reps) timed,
    unless a smaller `reps` is asked for (a smoke run): then reps bounds both."""
    from interleave.bench import time_fn
    for reps, warmup, min_reps, calls in [(30, 3, 5, 1 + 2 + 30), (3, 3, 5, 1 + 2 + 3), (2, 3, 5, 1 + 1 + 2),
                                          (1, 3, 5, 1 + 0 + 1), (8, 1, 3, 1 + 0 + 8)]:
        n = []
        t = time_fn(lambda: n.append(1), "cpu", reps, warmup=warmup, min_reps=min_reps)
        assert len(n) == calls and t >= 0, (reps, warmup, min_reps, len(n))
    n = []  # a slow call: the 4 s budget cuts the timed calls, but never below min_reps
    time_fn(lambda: (n.append(1), __import__("time").sleep(0.1)), "cpu", 30, warmup=1, min_reps=5, budget_s=0.2)
    assert len(n) == 1 + 5


def test_extension_links_libstdcxx_shared():
    """The extension loads libstdc++ as a shared library and holds no copy of its own: on the lent
    H100 machines a toolchain linked it in statically and every TORCH_CHECK message with a number
    crashed (setup.py's dynamic_libstdcxx; bench/results/2026-11-27-H100-404b09f-errpath.txt)."""
    import shutil

    import pytest
    from interleave import _extension
    if _extension.module is None or not sys.platform.startswith("linux"):
        pytest.skip("compiled extension not built, or not an ELF platform")
    if shutil.which("readelf") is None or shutil.which("nm") is None:
        pytest.skip("needs binutils (readelf, nm)")
    so = _extension.module.__file__
    needed = subprocess.run(["readelf", "-d", so], capture_output=True, text=True, check=True).stdout
    assert "libstdc++.so.6" in needed
    defined = subprocess.run(["nm", "-C", "--defined-only", so], capture_output=True, text=True, check=True).stdout
    assert "std::locale::classic()" not in defined  # a statically linked libstdc++ defines it


def test_roofline_fraction_of_the_h100_patch_embed_run():
    """The bench's roofline for GEMM-like CUDA cases (issue 4's bar: 50% of whichever binds), on the
    404b09f H100 numbers: bf16 N=64, 63.2 GFLOP and 138.8 MB in 0.460 ms, 3.0 TB/s copy bandwidth:
    the tensor-core bound (63.9 us) binds, 13.9% of the roofline."""
    from interleave.bench import roofline_fraction, tensor_peak_tflops
    assert tensor_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert tensor_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert tensor_peak_tflops("NVIDIA H200") == 989.4 and tensor_peak_tflops("Some GPU") is None
    f = roofline_fraction(0.460e-3, 63207309312, 138841344, 989.4, 3001.6)
    assert abs(f - 0.1389) < 1e-3
    # bandwidth-bound case: 1 GB moved in 0.5 ms at 3 TB/s with few flops -> 0.333 / 0.5
    assert abs(roofline_fraction(0.5e-3, 10**6, 10**9, 989.4, 3000.0) - 2 / 3) < 1e-9


def test_gpu_decide_reads_a_committed_run(tmp_path):
    """bench/gpu_decide.py (run at the end of bench/gpu_check.sh) reads a committed H100 run and its
    test log and prints every bar and decision section; with a synthetic wgmma variant that passed
    and is faster it says to let auto choose it at those sizes, and with a failing wgmma test it
    says to keep it a variant; likewise the staged variant, cuBLASLt's C operand and merge_tokens'
    look-back."""
    import json
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = os.path.join(root, "bench", "results", "2026-11-27-NVIDIA-H100-80GB-HBM3-c6aacb5.json")
    log = os.path.join(root, "bench", "results", "2026-11-27-H100-c6aacb5-cuda-tests.txt")
    script = os.path.join(root, "bench", "gpu_decide.py")
    out = subprocess.run([sys.executable, script, run, log], capture_output=True, text=True, check=True).stdout
    for section in ("== GPU bars", "merge_tokens B=1 L=8192 D=1024", "== anyres_tiles tensor-core",
                    "== patch_embed wgmma", "model time to first token: 3.23x",
                    "image_processor OneVision 1080x1920 -> 16 tiles: 3.4x transformers' torchvision processor"):
        assert section in out, out
    report = json.load(open(run))
    for r in report["results"]:
        if r["op"] == "patch_embed" and r["dtype"] == "bfloat16":
            r["median_ms"]["ours_wgmma"] = r["median_ms"]["ours"] / 2
            r["variants_error_vs_float64"]["ours_wgmma"] = r["error_vs_float64"]
            r["notes"] = ["ours_wgmma ran the wgmma kernel: True"]
    fake = tmp_path / "run.json"
    fake.write_text(json.dumps(report))
    passed = tmp_path / "passed.log"
    passed.write_text("..........\n10 passed in 12.00s\n")
    out = subprocess.run([sys.executable, script, str(fake), str(passed)], capture_output=True, text=True,
                         check=True).stdout
    assert "-> wgmma kernel: let auto choose it at N=1, N=16, N=64" in out, out
    failed = tmp_path / "failed.log"
    failed.write_text("FAILED tests/test_patch_embed.py::test_cuda_wgmma_kernel_runs_and_follows_weight_changes\n"
                      "1 failed, 9 passed in 12.00s\n")
    out = subprocess.run([sys.executable, script, str(fake), str(failed)], capture_output=True, text=True,
                         check=True).stdout
    assert "-> wgmma kernel: keep it a variant" in out.split("== patch_embed wgmma")[1], out
    # The staged variant, faster again and its tests passed: make it auto's from 4096 tokens; and the
    # cuBLASLt comparison, cuBLASLt slower than copy + addmm: make cublas_copy the default.
    for r in report["results"]:
        if r["op"] == "patch_embed" and r["dtype"] == "bfloat16":
            r["median_ms"]["ours_wgmma_staged"] = r["median_ms"]["ours"] / 3
            r["median_ms"]["ours_cublas"] = r["median_ms"]["ours"]
            r["median_ms"]["ours_cublas_copy"] = r["median_ms"]["ours"] / 1.1
            r["median_ms"]["ours_cublas_tuned"] = r["median_ms"]["ours"] / 1.2
        if r["op"] == "anyres_tiles" and r["device"] == "cuda":
            r["median_ms"]["ours_rows4"] = r["median_ms"]["ours"] / 1.4
            r.setdefault("variants_bitwise_equal", {})["ours_rows4"] = True
            r["median_ms"]["ours_imma"] = r["median_ms"]["ours"] / 2.5
            r["variants_bitwise_equal"]["ours_imma"] = True
            r["median_ms"]["ours_imma_unfused"] = r["median_ms"]["ours"] / 2
            r["variants_bitwise_equal"]["ours_imma_unfused"] = True
            r["variants_within_2x_reference_error"] = True
    fake.write_text(json.dumps(report))
    out = subprocess.run([sys.executable, script, str(fake), str(passed)], capture_output=True, text=True,
                         check=True).stdout
    assert "-> staged variant (tests: passed): let auto choose it at N=1, N=16, N=64" in out, out
    assert "-> below 4096 tokens: take cublas_copy; from 4096 tokens: keep cublas_copy" in out, out
    assert "-> algorithm tuning (tests: passed): make it the default" in out, out
    assert "-> SIMT pass 1, 4 rows per block (tests: passed): make it the default" in out, out
    assert "-> integer tensor-core pass 1, fused (tests: passed): make it the default" in out, out
    assert "-> integer tensor-core pass 1, unfused (tests: passed): make it the default unfused" in out, out
    assert "fused is faster: where both lines above say make it the default, take the fused one" in out, out
    # merge_tokens' sync-free variants: the look-back 1.3x faster than the default at every shape
    # and its tests passed -> make it the default; 16 loads no faster -> keep 8; a failing look-back
    # test -> keep it a variant.
    for r in report["results"]:
        if r["op"] == "merge_tokens" and r["device"] == "cuda":
            base = r["median_ms"]["ours_sync_free"]
            r.get("device_ms", {}).pop("ours_sync_free", None)
            r["median_ms"].update(ours_sync_free_lookback=base / 1.3, ours_sync_free_two_launch=base * 1.2,
                                  ours_sync_free_loads16=base, ours_sync_free_lookback_loads16=base / 1.25)
    fake.write_text(json.dumps(report))
    out = subprocess.run([sys.executable, script, str(fake), str(passed)], capture_output=True, text=True,
                         check=True).stdout
    assert "== merge_tokens sync-free path" in out and "lookback" in out and "1.30x)" in out, out
    assert "-> look-back: make it the default" in out and "-> 16 loads: keep 8" in out, out
    failed.write_text("FAILED tests/test_merge_tokens.py::test_lookback_equals_reference_repeatedly[bench-shape]\n"
                      "1 failed, 9 passed in 12.00s\n")
    out = subprocess.run([sys.executable, script, str(fake), str(failed)], capture_output=True, text=True,
                         check=True).stdout
    assert "-> look-back: keep it a variant" in out, out
    # The image processor's overlapped upload: 1.25x faster by call time, equal, tests passed ->
    # make it the default; 1% faster -> keep pinned.
    for speedup, verdict in ((1.25, "make it the default"), (1.01, "keep pinned")):
        for r in report["results"]:
            if r["op"] == "image_processor" and r["device"] == "cuda":
                r["median_ms"]["ours_overlapped"] = r["median_ms"]["ours"] / speedup
                r.setdefault("variants_bitwise_equal", {})["ours_overlapped"] = True
        fake.write_text(json.dumps(report))
        out = subprocess.run([sys.executable, script, str(fake), str(passed)], capture_output=True, text=True,
                             check=True).stdout
        assert f"({speedup:.2f}x), bitwise equal: True" in out.split('upload="overlapped"')[1], out
        assert f"-> overlapped upload (tests: passed): {verdict}" in out, out


def test_gpu_preflight_rules_out_paths_and_the_tests_follow():
    """bench/gpu_preflight.py runs each never-verified CUDA path (--all: every path) in a child
    process; here (no GPU) all are unavailable and named in the INTERLEAVE_SKIP_PATHS line gpu_check.sh exports; with
    that variable the paths' CUDA tests are skipped with the preflight's reason (tests/conftest.py)
    and only theirs: anyres' SIMT parameter of the same test is not."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "bench", "gpu_preflight.py")], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    last = out.strip().splitlines()[-1]
    assert last.startswith("INTERLEAVE_SKIP_PATHS=")
    if torch_cuda_available():
        return  # on a GPU the verdicts depend on the kernels; gpu_check.sh records them
    assert set(last.split("=", 1)[1].split(",")) == {"merge_lookback", "merge_loads16", "cublas_tune",
                                                     "anyres_rows4", "anyres_imma", "anyres_imma_staged",
                                                     "anyres_arena_cache"}, out  # UNVERIFIED
    listed = subprocess.run([sys.executable, os.path.join(root, "bench", "gpu_preflight.py"), "--list"],
                            capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert listed == last.split("=", 1)[1], (listed, last)  # what gpu_preflight.sh rules out without a verdict
    # --all names every path (the run above already drove the child processes: listing is enough)
    out = subprocess.run([sys.executable, os.path.join(root, "bench", "gpu_preflight.py"), "--all", "--list"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert set(out.strip().split(",")) == \
        {"wgmma", "wgmma_staged", "anyres_mma", "im2col_staged", "cublas_lt", "merge_lookback", "merge_loads16",
         "cublas_tune", "anyres_rows4", "anyres_imma", "anyres_imma_staged", "anyres_arena_cache"}, out
    env = dict(os.environ, INTERLEAVE_SKIP_PATHS="anyres_mma")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                        os.path.join(root, "tests", "test_anyres_tiles.py"), "-k", "tensor_core_pass"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=root)
    lines = [x for x in r.stdout.splitlines() if x.startswith("SKIPPED")]
    assert any("anyres_mma: failed or unavailable in bench/gpu_preflight.py" in x for x in lines), r.stdout
    assert any("needs a CUDA GPU" in x for x in lines), r.stdout  # the simt parameter


def torch_cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def test_gpu_check_runs_the_unverified_paths_tests_first():
    """INTERLEAVE_TEST_FIRST (set by bench/gpu_check.sh) moves the matching CUDA tests to the front,
    so a run cut short by the device's budget still answers for the paths no GPU has verified."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, INTERLEAVE_TEST_FIRST="wgmma,sync_free")
    r = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                        os.path.join(root, "tests", "test_anyres_tiles.py"), os.path.join(root, "tests", "test_merge_tokens.py"),
                        os.path.join(root, "tests", "test_patch_embed.py")],
                       capture_output=True, text=True, timeout=300, env=env, cwd=root)
    ids = [x for x in r.stdout.splitlines() if "::" in x]
    k = sum(1 for x in ids if "wgmma" in x or "sync_free" in x)
    assert k >= 5 and all("wgmma" in x or "sync_free" in x for x in ids[:k]), ids[:k + 2]
    assert not any("wgmma" in x or "sync_free" in x for x in ids[k:])


def test_gpu_ncu_specs_name_benchmark_cases():
    """bench/gpu_ncu.sh's default cases (read under Nsight Compute at the end of gpu_check.sh) and
    gpu_check.sh's kernel-table cases (bench/gpu_profile.py) name cases of interleave.bench: each
    op:shape:dtype resolves on the CPU, and each @variant is one the benchmark defines for CUDA (a
    typo would only show on the GPU, in its scarce minutes)."""
    text = open(os.path.join(ROOT, "bench", "gpu_ncu.sh")).read()
    specs = re.search(r'specs=\$\{NCU_SPECS:-"(.+?)"\}', text, flags=re.S).group(1).split()
    bench_text = open(os.path.join(ROOT, "interleave", "bench.py")).read()
    assert len(specs) >= 4
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import gpu_ncu
        for spec in specs:
            case_spec, _, variant = spec.partition("@")
            label, fn = gpu_ncu.find(case_spec)  # the case exists (on this machine's device)
            assert callable(fn) and label.endswith("@ours")
            # one of interleave/bench.py's CUDA-only variants of these cases: named there, or one of
            # patch_embed's forced GEMMs (ours_<mode>, made in a loop)
            gemm_modes = {f"ours_{m}" for m in ("wgmma", "wgmma_staged", "cublas", "cublas_copy", "mma")}
            assert variant == "ours" or variant in gemm_modes or f'variants["{variant}"]' in bench_text \
                or f'"{variant}":' in bench_text, spec
        # gpu_check.sh's kernel tables (bench/gpu_profile.py, same op:shape:dtype form): each names a
        # case too (an unknown one prints "no such case" and costs its share of the 90 s).
        check = open(os.path.join(ROOT, "bench", "gpu_check.sh")).read()
        profile = re.search(r"gpu_profile\.py (.+?) >", check, flags=re.S).group(1)
        profile_specs = profile.replace("\\\n", " ").replace("\\>", ">").split()
        assert len(profile_specs) >= 6 and all(s.count(":") == 2 for s in profile_specs), profile_specs
        for spec in profile_specs:
            label, _ = gpu_ncu.find(spec)
            assert label.startswith(spec.split(":")[0]), (spec, label)
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
