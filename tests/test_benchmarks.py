"""The benchmarks cannot rot unseen: every one runs in `make bench-smoke` (CI), and the table in
docs/benchmarks.md is exactly what their committed results make."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO

BENCHMARKS = REPO / "benchmarks"


def test_every_benchmark_runs_in_bench_smoke():
    """A script that saves a result (a `Summary`) is listed in the Makefile's BENCHMARKS, whose
    every entry `make bench-smoke` runs with --smoke, which each one's command line offers."""
    listed = set(re.search(r"^BENCHMARKS := (.+)$", (REPO / "Makefile").read_text(),
                           re.MULTILINE).group(1).split())
    saving = {path.stem for path in BENCHMARKS.glob("*.py")
              if "Summary(" in path.read_text() and path.stem != "measure"}
    assert saving, "no benchmark found"
    assert saving <= listed, f"not in make bench-smoke: {sorted(saving - listed)}"
    for name in sorted(listed):
        done = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--help"],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0 and "--smoke" in done.stdout, f"{name}: {done.stderr}"


def test_benchmark_table_is_generated_from_the_results():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "table.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
