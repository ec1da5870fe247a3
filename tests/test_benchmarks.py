"""Smoke tests for the scripts under ``benchmarks/``, so that they cannot rot."""

from __future__ import annotations

import json
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
    compiled = re.search(r"^nnflow compile_grad\s+(\d+\.\d+)\s", out, re.MULTILINE)
    assert compiled is not None and float(compiled.group(1)) > 0, out
    assert "issue 3 target, compiled chain" in out and "<= 3x numpy fwd" in out, out


def _env() -> dict:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )


def test_runner_runs_every_workload_on_tiny_shapes(tmp_path):
    """``python -m benchmarks --repeat 1`` on tiny shapes: every workload agrees and is timed.

    Only hand-written NumPy and nnflow run (``--systems``), so neither torch nor JAX is needed
    and the whole run takes seconds.
    """
    from benchmarks.workloads import WORKLOADS

    report = tmp_path / "bench.json"
    systems = "numpy-naive,numpy-best,nnflow-eager,nnflow-compiled"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--repeat", "1", "--systems", systems,
         "--max-wait", "0", "--round-time", "0.005", "--warm", "0.005", "--json", str(report)],
        capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "DISAGREES" not in out and "failed to run" not in out
    assert re.search(r"^- machine: .+, \d+ cores; Python .+, NumPy .+ with ", out, re.M), out
    assert re.search(r"^- OPENBLAS_CORETYPE (not set|set to)", out, re.M), out
    for name in WORKLOADS:
        assert f"### {name}: " in out, out
    rows = re.findall(r"^\| \*\*nnflow-compiled\*\* \| ([\d.]+) (ms|µs|µs/op) \|", out, re.M)
    gemm_has_no_nnflow = 1
    assert len(rows) == len(WORKLOADS) - gemm_has_no_nnflow, out
    data = json.loads(report.read_text())
    assert set(data["results"]) == set(WORKLOADS)
    for name, result in data["results"].items():
        stats = result["summary"]["stats"]
        assert all(s["median"] > 0 for s in stats.values()), name
        assert all(v["agree"] for v in result["agreement"].values()), name
        if "numpy-best" in WORKLOADS[name].systems():  # not the GRU/RNN: nnflow and torch only
            assert "numpy-best" in stats, name
            assert result["systems"]["numpy-best"]["alloc"]["peak"] >= 0
        else:
            assert set(stats) == {"nnflow-eager", "nnflow-compiled"}, name


def test_agreement_check_catches_a_wrong_gradient():
    """The runner's comparison flags an array off by more than the tolerance, or missing."""
    import numpy as np

    from benchmarks.run import compare

    ref = {"value": np.array(2.0), "W": np.array([1.0, -3.0, 0.5])}
    assert compare({"value": np.array(2.0), "W": ref["W"] * (1 + 1e-9)}, ref, 1e-6)[0]
    agree, err, worst = compare({"value": np.array(2.0), "W": ref["W"] + [0, 0, 0.01]}, ref, 1e-6)
    assert not agree and worst == "W" and abs(err - 0.01 / 3.0) < 1e-12
    assert not compare({"value": np.array(2.0)}, ref, 1e-6)[0]
