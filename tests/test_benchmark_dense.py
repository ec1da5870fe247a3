"""Smoke tests for ``benchmarks/dense.py`` and ``benchmarks/layers.py``, the runner's wrappers.

They run the runner's workloads on tiny shapes (seconds), so that neither can rot; the dense one
must report the compiled-tapes issue's three targets.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--tiny", "--repeat", "1", "--max-wait", "0", "--round-time", "0.005", "--warm", "0.005"]


def _run(script: str, *args: str) -> str:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, *FAST],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DISAGREES" not in proc.stdout and "failed to run" not in proc.stdout, proc.stdout
    return proc.stdout


def test_dense_wrapper_reports_the_issue_targets():
    out = _run("dense.py", "--dtypes", "float32", "--no-peers")
    assert "### dense-f32: " in out and "### chain: " in out and "### dense-f64" not in out, out
    for system in ("numpy-naive", "numpy-best", "**nnflow-eager**", "**nnflow-compiled**"):
        assert re.search(rf"^\| {re.escape(system)} \| [\d.]+ (ms|µs) \|", out, re.M), out
    for target in (
        r"nnflow-compiled <= 1\.05x numpy-best: [\d.]+x",
        r"nnflow-eager <= 1\.3x numpy-naive: [\d.]+x",
        r"nnflow-compiled allocates < 64 KiB per call: [\d.]+ (B|KiB|MiB) — (met|MISSED)",
    ):
        assert re.search(rf"^- target \(compiled-tapes issue\): {target}", out, re.M), out
    assert not re.search(r"^\| torch \|", out, re.M), out  # --no-peers


def test_dense_wrapper_passes_options_on():
    from benchmarks.dense import runner_arguments

    assert runner_arguments([]) == ["--only", "dense-f64,dense-f32,chain"]
    assert runner_arguments(["--skip-chain", "--no-peers", "--json", "x.json"]) == [
        "--only",
        "dense-f64,dense-f32",
        "--systems",
        "numpy-naive,numpy-best,nnflow-eager,nnflow-compiled",
        "--json",
        "x.json",
    ]
    with pytest.raises(SystemExit):
        runner_arguments(["--dtypes", "float16"])


def test_layers_wrapper_runs_conv_and_lstm():
    from benchmarks.layers import runner_arguments

    assert runner_arguments(["--repeat", "3"]) == ["--only", "conv,lstm", "--repeat", "3"]
    with pytest.raises(SystemExit):
        runner_arguments(["--workloads", "mlp"])
    out = _run("layers.py", "--systems", "numpy-best,nnflow-eager,nnflow-compiled")
    assert "### conv: " in out and "### lstm: " in out, out
    assert len(re.findall(r"^\| \*\*nnflow-compiled\*\* \|", out, re.M)) == 2, out
