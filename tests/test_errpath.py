"""bench/errpath_diag.py itself: on this machine every case raises a Python exception (the H100
machines crashed on the op cases; the diagnosis must keep telling the layers apart there)."""
import os
import subprocess
import sys

import pytest

from interleave import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(_extension.module is None, reason="compiled extension not built")
@pytest.mark.parametrize("case", ["module_throw_c10_pybind11", "module_kernel_direct", "module_dispatcher_caught",
                                  "ops_merge_count"])
def test_errpath_case_raises_cleanly(case):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "errpath_diag.py"), case],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().startswith("raised ValueError"), p.stdout
    assert "merge_tokens" in p.stdout or "pybind11" in p.stdout
