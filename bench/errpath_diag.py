"""Which error paths crash the process? A diagnosis for bench/gpu_check.sh.

The first H100 run (torch 2.11.0+cu130, gcc 13.3, Python 3.12) saw every C++ exception our ops raise
end in a segmentation fault instead of a Python ValueError, on CPU and CUDA tensors alike; this
project's CPU machine (gcc 12, torch 2.14.1, 2.13.0+cpu and 2.11.0+cu130 built here) raises cleanly.
Each case below runs in its own subprocess with faulthandler on and prints one line:
`<case>: ok | raised <Type> | CRASH rc=<n>`, so one run tells which layer is at fault:
a plain torch error (baseline), our op through torch.ops with and without autograd, with and
without CUDA initialized, and a C++ exception thrown from our module through pybind11 directly.

    python3 bench/errpath_diag.py            # all cases, one line each; rc 1 if any crashed
    python3 bench/errpath_diag.py CASE       # one case in this process (what the driver runs)
"""
import concurrent.futures
import os
import subprocess
import sys

CASES = {
    # torch's own C++ error through the dispatcher: if this crashes, the problem is not ours.
    "torch_mm_shape": "torch.mm(torch.ones(2, 3), torch.ones(2, 3))",
    # a c10::Error thrown and caught inside our module (no Python, no dispatcher): must return True.
    "module_throw_and_catch": "assert interleave._C._diag_throw_and_catch()",
    # a std::runtime_error from our module through pybind11 (no dispatcher).
    "module_throw_pybind11": "interleave._C._diag_throw_std()",
    # a c10::ValueError (TORCH_CHECK_VALUE) from our module through pybind11 (no dispatcher).
    "module_throw_c10_pybind11": "interleave._C._diag_throw_c10()",
    # number formatting in our module, no exception: c10::str (what TORCH_CHECK's message uses) and
    # a plain std::ostringstream; the 2026-11-27 backtrace crashed inside operator<<(long).
    "module_format_c10": "assert interleave._C._diag_format_c10(7) == 'n = 7'",
    "module_format_ostream": "assert interleave._C._diag_format_ostream(7) == 'n = 7'",
    # our CPU kernel called directly from our module (its real throw site, no dispatcher).
    "module_kernel_direct": "interleave._C._diag_merge_direct()",
    # our op through the C++ dispatcher below autograd, caught in our module (no Python in between).
    "module_dispatcher_caught": "raise ValueError(interleave._C._diag_merge_dispatcher_caught())",
    # our op, called straight through torch.ops (no Python wrapper checks), no autograd.
    "ops_merge_count": "torch.ops.interleave.merge_tokens(torch.tensor([[1, 5, 5, 2]]), torch.randn(10, 4), "
                       "torch.randn(3, 4), [5], None, -1)",
    # the same with a tensor that requires grad: goes through the torch.library autograd kernel.
    "ops_merge_count_grad": "torch.ops.interleave.merge_tokens(torch.tensor([[1, 5, 5, 2]]), "
                            "torch.randn(10, 4, requires_grad=True), torch.randn(3, 4), [5], None, -1)",
    # text id outside the embedding table (the other merge_tokens check).
    "ops_merge_text_id": "torch.ops.interleave.merge_tokens(torch.tensor([[1, 50, 5, 2]]), torch.randn(10, 4), "
                         "torch.randn(1, 4), [5], None, -1)",
    # a corrupt pack_tokens layout (the crash seen in tests/test_pack_tokens.py on the H100).
    "ops_pack_layout": "torch.ops.interleave.pack_tokens(torch.randn(1, 4, 8), None, "
                       "torch.full((1, 16), 7, dtype=torch.long), 3, 2)",
}
CUDA_PRELUDE = "torch.zeros(1, device='cuda'); torch.cuda.synchronize()\n"


def run_one(name: str) -> None:
    import torch
    import interleave  # registers the ops
    import interleave._C  # noqa: F401  (the diagnosis functions)
    code = CASES[name.removesuffix("+cuda")]
    if name.endswith("+cuda"):
        exec(CUDA_PRELUDE, {"torch": torch})
    try:
        exec(code, {"torch": torch, "interleave": interleave})
    except Exception as e:  # what we want: a Python exception with the message
        print(f"raised {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return
    print("ok (no error raised)")


def main() -> int:
    if len(sys.argv) > 1:
        run_one(sys.argv[1])
        return 0
    import torch
    names = list(CASES)
    if torch.cuda.is_available():
        names += [n + "+cuda" for n in CASES]
    # The cases run concurrently (each process spends seconds importing torch; the 24 cases one after
    # the other overran gpu_check.sh's 120 s on the H100 at c6aacb5); results print in case order.
    def run_case(name):
        return subprocess.run([sys.executable, "-X", "faulthandler", __file__, name], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    workers = max(1, min(8, (os.cpu_count() or 2) // 2))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(run_case, names))
    crashed = 0
    for name, p in zip(names, results):
        if p.returncode == 0:
            print(f"{name}: {p.stdout.strip().splitlines()[-1] if p.stdout.strip() else 'ok'}")
        else:
            crashed += 1
            print(f"{name}: CRASH rc={p.returncode}")
            print("    " + "\n    ".join((p.stderr.strip().splitlines() or ["(no stderr)"])[-12:]))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
