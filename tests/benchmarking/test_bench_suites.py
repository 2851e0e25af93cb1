"""The pytest-benchmark suites of ``bench/`` still run on the shared case data: a named case per
suite kind, fusedops and its peers checked against the reference, missing peers skipped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_suites_check_and_run_named_cases():
    selected = "(rope-decode-float32 or int8_embedding-decode-float32) and not compile"
    cmd = [
        sys.executable, "-m", "pytest", str(REPO / "bench"), "-q", "-rs", "-p", "no:cacheprovider",
        "-o", "python_files=bench_*.py", "--benchmark-disable", "-k", selected,
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    # rope: fusedops, eager; int8: fusedops, F.embedding, eager. Liger is skipped with a reason.
    assert "5 passed" in out and "1 skipped" in out, out
    assert "liger_kernel" in out, out
