"""Smoke tests for the scripts under ``benchmarks/``, so that they cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_overhead_runs():
    """``benchmarks/overhead.py`` agrees with its peers and prints an nnflow µs/op figure.

    Tiny counts keep it fast; peers that are not installed (torch, autograd) are skipped by
    the script itself, so this test does not need them.
    """
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "overhead.py"),
            "--repeat",
            "1",
            "--ops",
            "5",
            "--round-time",
            "0.02",
            "--max-wait",
            "0",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "DISAGREE" not in out
    row = re.search(r"^nnflow ad\.grad\s+(\d+\.\d+)\s", out, re.MULTILINE)
    assert row is not None, out
    assert float(row.group(1)) > 0
