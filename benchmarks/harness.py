"""Measuring: the worker process that runs one system's workload, and machine helpers.

The runner (``benchmarks/run.py``) starts one worker per (workload, system)::

    python -m benchmarks.harness WORKLOAD SYSTEM --check PATH [--tiny] [--device gpu] ...

The worker builds the workload, writes its check arrays (value and gradients) to ``PATH``
(``.npz``), warms up and answers commands on stdin with one JSON line each on its own copy of
stdout (anything the libraries print goes to stderr):

* ``time``: one round, ``{"seconds": median per call, "calls", "cpu_share", "load"}``. A round
  warms up for ``--warm`` seconds (a process that sat idle for seconds runs its first calls up
  to 3x slower: cold caches, a descheduled vCPU), then times blocks of calls for
  ``--round-time`` seconds (at least 3 blocks) and reports the median block.
* ``alloc``: bytes NumPy allocated during one call after warm-up (``tracemalloc`` peak above
  the baseline, temporaries included), ``null`` for systems whose arrays are not NumPy's.
* ``profile``: the top entries of ``cProfile`` over about a second of calls.
* ``rss``: the process's peak resident set size so far.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import statistics
import sys
import time
import traceback
import tracemalloc
from pathlib import Path

# -- machine helpers (the driver's, and overhead.py's) ---------------------------------------


def running_tasks() -> int | None:
    """Runnable tasks right now (4th field of /proc/loadavg, counting the reader itself)."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


def wait_for_quiet(max_wait: float, settle: int = 5, poll: float = 0.1) -> float:
    """Wait (at most ``max_wait`` s) until no other task is runnable for ``settle`` polls.

    Other jobs on a small machine (test runs) take a core for seconds at a time; starting a
    round while one runs skews it. Returns the seconds waited.
    """
    start, quiet = time.perf_counter(), 0
    while quiet < settle and time.perf_counter() - start < max_wait:
        running = running_tasks()
        if running is None:
            break
        quiet = quiet + 1 if running <= 1 else 0
        time.sleep(poll)
    return time.perf_counter() - start


def busy_jiffies() -> int:
    """CPU time (all cores, clock ticks) spent not idle since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except OSError:
        return 0
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


def process_jiffies(pid: int) -> int:
    """User + system CPU time (clock ticks, all threads) of process ``pid``."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def thread_pools() -> list[dict]:
    """The native thread pools loaded in this process (threadpoolctl), compactly."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "version", "num_threads", "architecture", "prefix")
    return [{k: info.get(k) for k in keys} for info in threadpool_info()]


def blas_info() -> str:
    """NumPy's BLAS: library, version and kernel architecture (threadpoolctl), or its config."""
    import numpy as np

    pools = [p for p in thread_pools() if p["user_api"] == "blas"]
    if pools:
        p = pools[0]
        return f"{p['internal_api']} {p['version']} ({p['architecture']} kernels, {p['prefix']})"
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')} (threadpoolctl not installed)"
    except Exception:  # noqa: BLE001 - purely informational
        return "unknown"


# -- the worker -------------------------------------------------------------------------------


def _timed(step, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - t0) / calls


def timed_round(step, warm: float, budget: float) -> dict:
    """Warm up for ``warm`` s, then time blocks of calls for ``budget`` s (3 blocks at least).

    Blocks hold enough calls to last about ``budget / 5``; the round's figure is the median
    block's time per call.
    """
    t0, per_call = time.perf_counter(), None
    while per_call is None or time.perf_counter() - t0 < warm:
        per_call = _timed(step, 1)
    calls = max(1, int(budget / 5 / max(per_call, 1e-9)))
    samples, c0, start = [], time.process_time(), time.perf_counter()
    while len(samples) < 3 or time.perf_counter() - start < budget:
        samples.append(_timed(step, calls))
    wall = time.perf_counter() - start
    return {
        "seconds": statistics.median(samples),
        "fastest": min(samples),
        "calls": calls * len(samples),
        "cpu_share": (time.process_time() - c0) / wall,  # > 1 with several busy threads
        "load": os.getloadavg()[0],
    }


def allocated(step) -> dict:
    """NumPy bytes allocated during one call: peak above the baseline, and kept afterwards."""
    tracemalloc.start()
    try:
        step()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        step()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"peak": max(peak - base, 0), "kept": current - base}


def profile(step, seconds: float = 1.0, top: int = 12) -> str:
    """``cProfile`` of about ``seconds`` of calls: the ``top`` entries by own time."""
    per_call = _timed(step, 1)
    calls = max(1, int(seconds / max(per_call, 1e-9)))
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        step()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs().sort_stats("tottime")
    stats.print_stats(top)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return f"{calls} calls\n" + "\n".join(line for line in lines[start:] if line.strip())


def versions(system: str) -> str:
    """The version of what ``system`` runs on."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy as np

    package = {"torch": "torch", "jax": "jax", "autograd": "autograd"}.get(system)
    if system.startswith("nnflow"):
        from importlib.util import find_spec

        import nnflow
        from nnflow import jit

        # (find_spec: no import of Numba, and of the SciPy it loads, where it will not run)
        kernels = "off (NNFLOW_NUMBA=0)" if find_spec("numba") else "off (not installed)"
        if os.environ.get("NNFLOW_NUMBA", "1") != "0" and jit.enabled():
            kernels = f"numba {version('numba')}"
        return (
            f"nnflow {nnflow.__version__} (this checkout), numpy {np.__version__}, "
            f"CPU kernels {kernels}"
        )
    if package is None:
        return f"numpy {np.__version__}"
    try:
        extra = f", jaxlib {version('jaxlib')}" if package == "jax" else ""
        return f"{package} {version(package)}{extra}"
    except PackageNotFoundError:
        return package


def threads(system: str) -> str:
    """The thread counts this process's libraries use."""
    parts = []
    if system == "torch":
        import torch

        parts.append(
            f"torch intra-op {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}"
        )
    if system == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        parts.append(
            "XLA "
            + (
                "1 thread"
                if "multi_thread_eigen=false" in flags
                else f"Eigen pool of {os.cpu_count()} (all cores)"
            )
        )
    for p in thread_pools():
        parts.append(f"{p['internal_api']} {p['num_threads']}")
    return ", ".join(parts) or "unknown"


def worker(args) -> int:
    """Build one system's workload, write its check arrays, then answer commands."""
    proto = os.fdopen(os.dup(1), "w")  # the replies; stray prints (C level too) go to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(obj) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    import numpy as np

    from .workloads import WORKLOADS
    from .workloads._common import NUMPY_ALLOCATING, Config

    wl = WORKLOADS[args.workload]
    cfg = Config(
        dtype=wl.dtype, tiny=args.tiny, device=args.device, threads=args.threads, options=wl.options
    )
    t0 = time.perf_counter()
    try:
        bench = wl.load().build(args.system, cfg)
        arrays = bench.check()
        np.savez(args.check, **arrays)
        for _ in range(2):
            bench.step()
    except Exception as error:  # noqa: BLE001 - reported by the driver, which goes on
        traceback.print_exc()
        reply({"error": f"{type(error).__name__}: {error}"})
        return 1
    reply(
        {
            "ready": True,
            "setup_s": time.perf_counter() - t0,
            "version": versions(args.system),
            "threads": threads(args.system),
        }
    )
    for line in sys.stdin:
        command = line.strip()
        if command == "time":
            reply(timed_round(bench.step, args.warm, args.round_time))
        elif command == "alloc":
            numpy_arrays = args.system in NUMPY_ALLOCATING and args.device == "cpu"
            reply(allocated(bench.step) if numpy_arrays else None)
        elif command == "profile":
            reply({"text": profile(bench.step)})
        elif command == "rss":
            reply({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
        else:
            break
    return 0


def main(argv=None) -> int:
    """The worker's command line (the runner's business; see the module docstring)."""
    p = argparse.ArgumentParser(description="one benchmark worker (started by the runner)")
    p.add_argument("workload")
    p.add_argument("system")
    p.add_argument("--check", required=True, help="where to write the check arrays (.npz)")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warm", type=float, default=0.2)
    p.add_argument("--round-time", type=float, default=0.4)
    return worker(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
