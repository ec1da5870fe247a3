"""Smoke test for ``benchmarks/dense.py`` (tiny sizes), so that it cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dense_benchmark_runs_and_checks_every_system():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [
        "--repeat",
        "1",
        "--size",
        "32",
        "--dtypes",
        "float32",
        "--chain-calls",
        "2",
        "--no-peers",
        "--round-time",
        "0.01",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dense.py"), *args, "--max-wait", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for system in ("naive", "inplace", "eager", "compiled"):
        assert re.search(rf"^\| {re.escape(system)} \| \d+\.\d+ ms", proc.stdout, re.M), proc.stdout
    assert re.search(r"^\| compiled \| \d+\.\d+ µs", proc.stdout, re.M), proc.stdout
