"""Build of interleave's one extension module, `interleave._C`.

CUDAExtension (CPU + CUDA kernels) when nvcc and a CUDA build of torch are present, otherwise
CppExtension (CPU kernels only); INTERLEAVE_CPU_ONLY=1 forces the latter. Install with
`pip install --no-build-isolation -e .` so the extension is built against the installed torch.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _is_toolkit_root(path):
    return bool(path) and all(os.path.isfile(os.path.join(path, *p)) for p in (
        ("bin", "nvcc"), ("include", "cuda_runtime_api.h")))


def find_cuda_home():
    """The CUDA toolkit root (the folder with bin/nvcc and lib64/), or None.

    The nvcc on PATH may be a wrapper script in another folder (as on this project's machines):
    its own folder is not the toolkit root, so follow links and look inside scripts for the real
    nvcc before falling back to the usual install locations.
    """
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if _is_toolkit_root(env):
        return env
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        root = os.path.dirname(os.path.dirname(real))
        if _is_toolkit_root(root):
            return root
        try:
            with open(real, "rb") as f:
                head = f.read(4096)
            if not head.startswith(b"\x7fELF"):
                for m in re.finditer(rb"(/[^\s'\"]+)/bin/nvcc", head):
                    cand = m.group(1).decode()
                    if _is_toolkit_root(cand):
                        return cand
        except OSError:
            pass
    for cand in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True):
        if _is_toolkit_root(cand):
            return cand
    return None


def max_jobs():
    """Parallel compile jobs from cores and free memory (a torch-heavy TU takes ~1.5 GiB)."""
    cores = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        avail_gib = int(info["MemAvailable"].split()[0]) / (1 << 20)
    except (OSError, KeyError, ValueError):
        avail_gib = 4.0
    return max(1, min(cores, int(avail_gib // 1.5)))


CPU_ONLY = os.environ.get("INTERLEAVE_CPU_ONLY", "0") == "1"
CUDA_HOME = None if CPU_ONLY else find_cuda_home()
if CUDA_HOME:
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
    os.environ["CUDA_HOME"] = CUDA_HOME
os.environ.setdefault("MAX_JOBS", str(max_jobs()))

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

WITH_CUDA = bool(CUDA_HOME) and torch.version.cuda is not None and not CPU_ONLY
if os.environ.get("INTERLEAVE_REQUIRE_CUDA") == "1" and not WITH_CUDA:
    # CI sets this so that a build silently falling back to CPU-only fails loudly.
    sys.exit("interleave: INTERLEAVE_REQUIRE_CUDA=1 but the CUDA kernels would not be built "
             f"(CUDA toolkit: {CUDA_HOME}, torch CUDA: {torch.version.cuda}, CPU_ONLY: {CPU_ONLY})")
if WITH_CUDA and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
    # torch's arch detection needs a visible GPU; without one, build for Hopper. Compute capability
    # 9.0 is built as 9.0a (H100/H200 run sm_90a code): the wgmma kernel of patch_embed needs the
    # arch-specific features, and the rest of the code is the same for both. An explicit
    # TORCH_CUDA_ARCH_LIST is used as given.
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a}.{b}" + ("a" if (a, b) == (9, 0) else "") for a, b in caps)
    else:
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0a"

ccache = shutil.which("ccache")
if ccache:
    # Debian's ccache ships compiler-named links in /usr/lib/ccache; putting them first on PATH
    # keeps torch's compiler-version check working (it rejects CXX="ccache c++").
    if os.path.isdir("/usr/lib/ccache") and "CXX" not in os.environ:
        os.environ["PATH"] = "/usr/lib/ccache" + os.pathsep + os.environ.get("PATH", "")
    if WITH_CUDA:
        os.environ.setdefault("PYTORCH_NVCC", f"{ccache} {os.path.join(CUDA_HOME, 'bin', 'nvcc')}")


def dynamic_libstdcxx():
    """Link flags that make the extension load libstdc++ as a shared library, never link it in.

    On the lent H100 machines (Ubuntu 24.04, CXX=/opt/gcc/bin/g++ 13.3, Python 3.12) our _C.so came
    out with no NEEDED libstdc++.so.6 and libstdc++ code inside it; its std::ostream << long (every
    TORCH_CHECK message with a number) then crashed against the process's libstdc++ data
    (bench/results/2026-11-27-H100-404b09f-errpath.txt; fixed by this flag at c6aacb5, same file
    for that run). Naming the shared file (-l:libstdc++.so.6), ahead of the driver's own -lstdc++,
    binds every reference to it.
    Empty where the compiler cannot find that file (non-GNU toolchains, other platforms).
    """
    if not sys.platform.startswith("linux"):
        return []
    cxx = (os.environ.get("CXX") or "c++").split()[-1]
    try:
        found = subprocess.run([cxx, "-print-file-name=libstdc++.so.6"], capture_output=True,
                               text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return []
    return ["-l:libstdc++.so.6"] if os.path.isabs(found) and os.path.exists(found) else []


def find_cublaslt_include():
    """The folder holding cublasLt.h (with cublas_api.h beside it), or None: the toolkit's include
    folders first, then NVIDIA's cuBLAS wheel that torch's CUDA build installs (nvidia/cu13/include,
    or nvidia/cublas/include in older layouts). csrc/cuda/cublaslt_gemm.cpp loads the library at run
    time; without the header it is built as "unavailable" and patch_embed keeps its other path."""
    cands = [os.path.join(CUDA_HOME, "include"), os.path.join(CUDA_HOME, "targets", "x86_64-linux", "include")]
    try:
        import nvidia
        for base in nvidia.__path__:
            cands += sorted(glob.glob(os.path.join(base, "cu*", "include"))) + [os.path.join(base, "cublas", "include")]
    except ImportError:
        pass
    for cand in cands:
        if os.path.isfile(os.path.join(cand, "cublasLt.h")) and os.path.isfile(os.path.join(cand, "cublas_api.h")):
            return cand
    return None


def sources():
    found = glob.glob("csrc/**/*.cpp", recursive=True)
    if WITH_CUDA:
        found += glob.glob("csrc/**/*.cu", recursive=True)
    else:
        found = [s for s in found if not s.startswith(os.path.join("csrc", "cuda"))]
    return sorted(found)


def write_build_info(arch_list, cuda_version):
    """interleave/_build_info.py lets the package refuse an extension built for another torch
    before it tries to load it (a mismatched .so can fail in obscure ways)."""
    with open(os.path.join(ROOT, "interleave", "_build_info.py"), "w") as f:
        f.write("# Written by setup.py; not tracked by git.\n")
        f.write(f"torch_version = {torch.__version__!r}\n")
        f.write(f"with_cuda = {WITH_CUDA!r}\n")
        f.write(f"cuda_version = {cuda_version!r}\n")
        f.write(f"arch_list = {arch_list!r}\n")


def extension():
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if WITH_CUDA else ""
    cuda_version = torch.version.cuda if WITH_CUDA else ""
    write_build_info(arch_list, cuda_version)
    macros = [
        ("INTERLEAVE_TORCH_VERSION", f'"{torch.__version__}"'),
        ("INTERLEAVE_ARCH_LIST", f'"{arch_list}"'),
        ("INTERLEAVE_CUDA_VERSION", f'"{cuda_version}"'),
    ]
    # -ffp-contract=off: Pillow-exact resample coefficients need uncontracted double arithmetic.
    # -fopenmp: at::parallel_for is an inline OpenMP loop; without the flag it silently runs serially.
    cxx = ["-O3", "-fvisibility=hidden", "-ffp-contract=off", "-fopenmp"]
    link = ["-fopenmp"] + dynamic_libstdcxx()
    cublaslt = find_cublaslt_include() if WITH_CUDA else None
    if WITH_CUDA:
        macros.append(("INTERLEAVE_WITH_CUDA", None))
        if cublaslt:
            # -idirafter: searched after the toolkit's own headers, so a wheel's copies of
            # cuda_runtime_api.h and friends never shadow the toolkit the kernels are built with.
            # Host-compiler flags only: the .cu files never include it (and keep their ccache entries).
            cxx = cxx + ["-DINTERLEAVE_HAVE_CUBLASLT", "-idirafter", cublaslt]
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-Xfatbin", "-compress-all"]
        ext = cpp_extension.CUDAExtension(
            "interleave._C", sources(), define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link,
        )
    else:
        ext = cpp_extension.CppExtension(
            "interleave._C", sources(), define_macros=macros, extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    kind = "CUDAExtension (CPU + CUDA kernels)" if WITH_CUDA else "CppExtension (CPU kernels only)"
    why = ""
    if not WITH_CUDA:
        why = (" [INTERLEAVE_CPU_ONLY=1]" if CPU_ONLY else
               " [no CUDA toolkit found]" if not CUDA_HOME else " [torch is a CPU build]")
    cuda = (f", CUDA {cuda_version} at {CUDA_HOME}, arch {arch_list}, cuBLASLt header "
            f"{cublaslt or 'not found'}") if WITH_CUDA else ""
    print(f"interleave: building {kind}{why}{cuda}, torch {torch.__version__}, "
          f"MAX_JOBS={os.environ['MAX_JOBS']}, ccache {'on' if ccache else 'off'}",
          file=sys.stderr, flush=True)
    return ext


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
