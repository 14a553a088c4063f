"""Every benchmark under benchmarks/ imports against the current package and documents itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deepdram.paths import REPO_ROOT

BENCHMARKS = sorted((REPO_ROOT / "benchmarks").glob("bench_*.py"))


def test_there_are_benchmarks():
    assert len(BENCHMARKS) >= 6


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_help_runs(path):
    """`--help` imports the module (a renamed library function fails here) and prints its usage."""
    r = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=300,
                       cwd=REPO_ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout
