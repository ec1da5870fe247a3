"""nnflow side by side with hand-written NumPy, PyTorch, JAX and HIPS autograd: one command.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks   # or benchmarks/run.py

runs every workload (``--only`` picks some; ``--list`` lists them) for every system that is
installed: ``numpy-naive`` and ``numpy-best`` (hand-written NumPy, allocating and in place),
``nnflow-eager`` (``ad.grad``), ``nnflow-compiled`` (``ad.compile_grad``), ``torch`` (PyTorch
eager), ``jax`` (``jax.jit``) and ``autograd`` (HIPS). It prints, per workload, each system's
median time per call over ``--repeat`` rounds with the min-max of the rounds, the ratio to the
workload's reference system, the bytes NumPy allocated per call (tracemalloc) and the peak RSS
of the system's process, then the targets; and the machine: CPU, cores, NumPy and its BLAS,
thread counts, ``OPENBLAS_CORETYPE``, load.

Method:

* Every system runs in its own worker process, one per (workload, system), started once and
  warmed up (PyTorch's and NumPy's thread pools slow each other down inside one process). The
  driver interleaves them: in each round every worker, in an order that rotates from round to
  round, times its round while the others wait idle on their pipe.
* Thread counts are equal: ``--threads`` (default: all cores) goes to ``OMP_NUM_THREADS``,
  ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``torch.set_num_threads``; XLA uses all
  cores (with ``--threads 1`` it is told to use one).
* Before any time of a workload is measured, every system's value and gradients are compared
  with the reference implementation's (``numpy-naive`` where it exists); a system that
  disagrees is reported and not timed, and the run exits with status 1.
* Before each round the driver waits (up to ``--max-wait`` s) for other jobs to stop, and it
  measures the CPU time other processes took during every timed round (``/proc/stat``): a
  system's round where they took more than ``--max-other`` of the machine is redone (up to
  ``--redo`` times); rounds still contended are left out of the medians when at least 5 clean
  rounds remain for every system. ``--load-wait S`` first waits up to S seconds for the 1-min
  load to fall to ``--max-load``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: import this checkout's benchmarks and nnflow
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.workloads import WORKLOADS, Workload  # noqa: E402
from benchmarks.workloads._common import GPU_SYSTEMS, REQUIRES, SYSTEMS  # noqa: E402

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: Who computes the reference results each system is checked against, in preference order.
CHECK_REFERENCE = ("numpy-naive", "nnflow-eager", "torch")


# -- one worker process ---------------------------------------------------------------------
class Worker:
    """One (workload, system) process, spoken to over its stdin and a JSON line per reply."""

    def __init__(self, workload: Workload, system: str, args, folder: str):
        self.system = system
        self.check_path = os.path.join(folder, f"{system}.npz")
        self.log = open(os.path.join(folder, f"{system}.log"), "w+")  # noqa: SIM115
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.harness",
            workload.name,
            system,
            "--check",
            self.check_path,
            "--device",
            args.device,
            "--threads",
            str(args.threads),
            "--warm",
            str(args.warm),
            "--round-time",
            str(args.round_time),
        ] + (["--tiny"] if args.tiny else [])
        env = dict(os.environ)
        for var in THREAD_VARS:
            env[var] = str(args.threads)
        if args.threads == 1:
            flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=ROOT,
        )

    def read(self) -> dict | None:
        """The next reply (``{"error": ...}`` when the worker died)."""
        line = self.proc.stdout.readline()
        if line:
            return json.loads(line)
        self.proc.wait()
        self.log.seek(0)
        tail = self.log.read().strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"worker exited with status {self.proc.returncode}: {tail[0]}"}

    def ask(self, command: str) -> dict | None:
        """Send ``command`` and wait for its reply."""
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        """Tell the worker to stop and wait for it."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait()
        self.log.close()


# -- agreement ------------------------------------------------------------------------------
def compare(got: dict, ref: dict, rtol: float) -> tuple[bool, float, str]:
    """``(agree, worst error, detail)``: every array of ``ref`` against ``got``.

    The error of an array is ``max|got - ref| / max|ref|``: relative to the array's scale, so
    that entries near zero do not dominate.
    """
    import numpy as np

    worst, detail = 0.0, ""
    for name, r in ref.items():
        if name not in got:
            return False, float("inf"), f"no {name!r}"
        g = got[name]
        if g.shape != r.shape:
            return False, float("inf"), f"{name}: shape {g.shape} != {r.shape}"
        scale = max(float(np.max(np.abs(r))) if r.size else 0.0, 1e-30)
        err = float(np.max(np.abs(g - r))) / scale if r.size else 0.0
        if not np.isfinite(err):
            err = float("inf")
        if err > worst:
            worst, detail = err, name
    return worst <= rtol, worst, detail


def check_agreement(workload: Workload, workers: dict) -> tuple[str | None, dict]:
    """Compare every worker's check arrays with the reference's: ``(reference, verdicts)``."""
    import numpy as np

    rtol = 1e-6 if workload.dtype == "float64" else 2e-3
    ready = [s for s in workers if os.path.exists(workers[s].check_path)]
    ref = next((s for s in CHECK_REFERENCE if s in ready), ready[0] if ready else None)
    if ref is None:
        return None, {}
    load = dict(np.load(workers[ref].check_path))
    verdicts = {}
    for s in ready:
        agree, err, detail = compare(dict(np.load(workers[s].check_path)), load, rtol)
        verdicts[s] = {"agree": agree, "error": err, "worst": detail, "rtol": rtol}
    return ref, verdicts


# -- one workload ---------------------------------------------------------------------------
def run_workload(workload: Workload, systems: list[str], args) -> dict:
    """Start, check, time (interleaved), measure memory, stop: the workload's raw results."""
    result = {
        "workload": workload.name,
        "title": workload.title,
        "tiny": args.tiny,
        "failed": {},
        "disagree": {},
    }
    with tempfile.TemporaryDirectory(prefix=f"nnflow-bench-{workload.name}-") as folder:
        workers = {s: Worker(workload, s, args, folder) for s in systems}
        try:
            hellos = {s: w.read() for s, w in workers.items()}
            for s, hello in hellos.items():
                if "error" in hello:
                    result["failed"][s] = hello["error"]
            live = {s: w for s, w in workers.items() if s not in result["failed"]}
            ref, verdicts = check_agreement(workload, live)
            result["check_reference"], result["agreement"] = ref, verdicts
            for s, v in verdicts.items():
                if not v["agree"]:
                    result["disagree"][s] = v
            timed = [s for s in live if s not in result["disagree"]]
            result["systems"] = {
                s: {
                    "version": hellos[s]["version"],
                    "threads": hellos[s]["threads"],
                    "setup_s": hellos[s]["setup_s"],
                }
                for s in timed
            }
            result["rounds"] = _rounds(timed, live, args)
            for s in timed:
                result["systems"][s]["alloc"] = live[s].ask("alloc")
                if s in args.profile:
                    result["systems"][s]["profile"] = live[s].ask("profile")["text"]
                result["systems"][s]["maxrss_kib"] = live[s].ask("rss")["maxrss_kib"]
        finally:
            for w in workers.values():
                w.close()
    return result


def _rounds(timed: list[str], workers: dict, args) -> list[dict]:
    """``--repeat`` rounds; in each, every system once, the order rotating.

    A system's round during which other processes took more than ``--max-other`` of the
    machine is redone (``--redo`` times at most); the last try counts either way.
    """
    rounds = []
    for r in range(args.repeat):
        k = r % max(len(timed), 1)
        waited = harness.wait_for_quiet(args.max_wait) if args.max_wait > 0 else 0.0
        entry = {"round": r, "waited_s": waited, "load": os.getloadavg()[0], "systems": {}}
        for s in timed[k:] + timed[:k]:
            for attempt in range(args.redo + 1):
                out = _timed_round(s, workers[s])
                out["redone"] = attempt
                if out["other_share"] <= args.max_other:
                    break
                if args.max_wait > 0:
                    harness.wait_for_quiet(args.max_wait)
            entry["systems"][s] = out
        rounds.append(entry)
    return rounds


def _timed_round(system: str, worker: Worker) -> dict:
    """One timed round of ``worker``, with the share of the machine others used meanwhile."""
    ticks = os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
    pid = worker.proc.pid
    wall, busy, own = time.perf_counter(), harness.busy_jiffies(), harness.process_jiffies(pid)
    out = worker.ask("time")
    if "error" in out:
        raise RuntimeError(f"{system} died while timed: {out['error']}")
    elapsed = time.perf_counter() - wall
    other = (harness.busy_jiffies() - busy) - (harness.process_jiffies(pid) - own)
    out["other_share"] = max(0.0, other / (ticks * elapsed))
    return out


# -- statistics and the table ---------------------------------------------------------------
def summarise(workload: Workload, result: dict, args) -> dict:
    """Medians (over clean rounds when enough), ranges, ratios and target verdicts."""
    systems = list(result.get("systems", {}))
    series = {s: [r["systems"][s] for r in result["rounds"]] for s in systems}
    clean = {s: [x for x in v if x["other_share"] <= args.max_other] for s, v in series.items()}
    use_clean = bool(systems) and all(len(v) >= 5 for v in clean.values())
    chosen = clean if use_clean else series
    scale = 1.0
    if workload.per_op:
        from benchmarks.workloads.chain import SHAPES

        scale = 1.0 / (SHAPES["tiny" if args.tiny else "full"]["ops"] + 1)
    stats = {}
    for s, xs in chosen.items():
        times = [x["seconds"] * scale for x in xs]
        stats[s] = {
            "median": statistics.median(times),
            "min": min(times),
            "max": max(times),
            "rounds": len(times),
        }
    gpu = getattr(args, "device", "cpu") == "gpu"  # no NumPy systems there: torch is the base
    reference = ("torch", *workload.reference) if gpu else workload.reference
    ref = next((s for s in reference if s in stats), None)
    for s in stats:
        stats[s]["ratio"] = stats[s]["median"] / stats[ref]["median"] if ref else None
    targets = []
    for t in workload.gpu_targets if gpu else workload.targets:
        if t.system in stats and t.reference in stats:
            ratio = stats[t.system]["median"] / stats[t.reference]["median"]
            targets.append(
                {
                    "target": t.describe(),
                    "source": t.source,
                    "ratio": ratio,
                    "fastest": stats[t.system]["min"] / stats[t.reference]["min"],
                    "limit": t.ratio,
                    "met": ratio <= t.ratio,
                }
            )
        else:
            targets.append(
                {
                    "target": t.describe(),
                    "source": t.source,
                    "ratio": None,
                    "limit": t.ratio,
                    "met": None,
                }
            )
    for t in () if gpu else workload.alloc_targets:
        alloc = result.get("systems", {}).get(t.system, {}).get("alloc")
        peak = alloc["peak"] if alloc else None
        targets.append(
            {
                "target": t.describe(),
                "source": t.source,
                "bytes": peak,
                "limit_bytes": t.limit,
                "met": None if peak is None else peak < t.limit,
            }
        )
    contended = sum(
        any(x["other_share"] > args.max_other for x in r["systems"].values())
        for r in result["rounds"]
    )
    redone = sum(x.get("redone", 0) for r in result["rounds"] for x in r["systems"].values())
    return {
        "stats": stats,
        "reference": ref,
        "targets": targets,
        "clean_only": use_clean,
        "contended_rounds": contended,
        "redone": redone,
        "rounds": len(result["rounds"]),
        "loads": [r["load"] for r in result["rounds"]],
    }


def _unit(seconds: float, per_op: bool) -> tuple[float, str]:
    """Scale and unit for a workload's figures (from its reference median)."""
    if per_op:
        return 1e6, "µs/op"
    return (1e3, "ms") if seconds >= 1e-3 else (1e6, "µs")


def _fmt(seconds: float, scale: float) -> str:
    value = seconds * scale
    return f"{value:.3g}" if value < 1 else f"{value:.{max(0, 3 - len(str(int(value))))}f}"


def _fmt_bytes(n) -> str:
    if n is None:
        return "n/a"
    if n < 1024:
        return f"{n} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024**2:.1f} MiB"


def table(workload: Workload, result: dict, summary: dict) -> list[str]:
    """The workload's markdown section: a table, its targets and its caveats."""
    stats, ref = summary["stats"], summary["reference"]
    tiny = " (TINY SHAPES: a smoke run)" if result.get("tiny") else ""
    lines = [f"### {workload.name}: {workload.title}{tiny}", ""]
    lines += [
        f"| system | median | min–max | × {ref or 'ref'} | NumPy alloc/call | peak RSS |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for s in SYSTEMS:
        if s not in stats:
            continue
        st, info = stats[s], result["systems"][s]
        alloc = info.get("alloc")
        scale, unit = _unit(st["median"], workload.per_op)
        ratio = f"{st['ratio']:.2f}" if st["ratio"] is not None else "–"
        name = f"**{s}**" if s.startswith("nnflow") else s
        lines.append(
            f"| {name} | {_fmt(st['median'], scale)} {unit} | {_fmt(st['min'], scale)}–"
            f"{_fmt(st['max'], scale)} | {ratio} | "
            f"{_fmt_bytes(alloc['peak']) if alloc else 'n/a'} | "
            f"{info['maxrss_kib'] / 1024:.0f} MiB |"
        )
    lines.append("")
    for t in summary["targets"]:
        if t["met"] is None:
            lines.append(f"- target ({t['source']}): {t['target']} — not measured (missing)")
        elif "bytes" in t:
            verdict = "met" if t["met"] else "MISSED"
            lines.append(
                f"- target ({t['source']}): {t['target']}: {_fmt_bytes(t['bytes'])} — {verdict}"
            )
        else:
            verdict = "met" if t["met"] else f"MISSED by {(t['ratio'] / t['limit'] - 1):.0%}"
            lines.append(
                f"- target ({t['source']}): {t['target']}: {t['ratio']:.2f}x — {verdict} "
                f"(fastest rounds: {t['fastest']:.2f}x)"
            )
    for s, error in result["failed"].items():
        lines.append(f"- {s}: failed to run: {error}")
    for s, v in result["disagree"].items():
        lines.append(
            f"- {s}: DISAGREES with {result['check_reference']} (error {v['error']:.1e} "
            f"in {v['worst']!r}, tolerance {v['rtol']:.0e}); not timed"
        )
    agreed = [s for s, v in result.get("agreement", {}).items() if v["agree"]]
    if agreed:
        worst = max(result["agreement"][s]["error"] for s in agreed)
        lines.append(
            f"- agreement: {len(agreed)} systems agree with "
            f"{result['check_reference']} on the value and every gradient "
            f"(worst relative error {worst:.1e})"
        )
    loads = summary["loads"]
    if loads:
        kept = "clean rounds only" if summary["clean_only"] else "all rounds"
        lines.append(
            f"- {summary['rounds']} rounds ({summary['redone']} system rounds redone after "
            f"other processes took CPU; {summary['contended_rounds']} rounds with a system "
            f"still contended; medians over {kept}); 1-min load {min(loads):.2f}–{max(loads):.2f}"
        )
    return lines


# -- the machine ----------------------------------------------------------------------------
def machine_info(args, argv) -> dict:
    """Where and how the run happens (printed above the tables and kept in the JSON)."""
    import numpy as np

    unset = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v not in os.environ]
    prefix = f"env {' '.join('-u ' + v for v in unset)} " if unset else ""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": prefix + "python -m benchmarks " + shlex.join(argv),
        "cpu": harness.cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": harness.blas_info(),
        "threads": args.threads,
        "device": args.device,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "openblas_l2_size": os.environ.get("OPENBLAS_L2_SIZE"),
        "loadavg_start": os.getloadavg(),
    }


def header(info: dict) -> list[str]:
    """The machine as markdown lines."""
    coretype = info["openblas_coretype"]
    return [
        f"Run {info['date']}: `{info['command']}`",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, "
        f"NumPy {info['numpy']} with {info['blas']}",
        f"- threads: {info['threads']} for every system ({', '.join(THREAD_VARS)}, "
        f"torch.set_num_threads); device {info['device']}",
        f"- OPENBLAS_CORETYPE {'set to ' + repr(coretype) if coretype else 'not set'}; "
        f"OPENBLAS_L2_SIZE {'set' if info['openblas_l2_size'] else 'not set'}",
        "- 1-min load average at the start: "
        + " / ".join(f"{x:.2f}" for x in info["loadavg_start"]),
    ]


def _installed(system: str) -> bool:
    module = REQUIRES.get(system)
    return module is None or importlib.util.find_spec(module) is not None


def wait_for_load(max_load: float, max_wait: float) -> float:
    """Before the run: wait (at most ``max_wait`` s) for the 1-min load to fall to ``max_load``."""
    start = time.perf_counter()
    while os.getloadavg()[0] > max_load and time.perf_counter() - start < max_wait:
        time.sleep(2)
    return time.perf_counter() - start


def parse(argv):
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="workloads to run (comma-separated or repeated; default all)",
    )
    p.add_argument("--systems", help="systems to run (comma-separated; default all installed)")
    p.add_argument("--repeat", type=int, default=15, help="interleaved rounds (default 15)")
    p.add_argument("--json", metavar="PATH", help="write every raw figure to PATH")
    p.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="gpu: nnflow on CuPy, torch and JAX on CUDA; NumPy systems skipped",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads for every system (default: all cores)",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="tiny shapes: a smoke run (seconds), figures meaningless",
    )
    p.add_argument("--round-time", type=float, default=0.4, help="timed seconds per round")
    p.add_argument("--warm", type=float, default=0.2, help="warm-up seconds per round")
    p.add_argument(
        "--max-wait",
        type=float,
        default=2.0,
        help="before each round wait up to this long for other jobs (0: never)",
    )
    p.add_argument(
        "--max-other",
        type=float,
        default=0.1,
        help="a round is contended if other processes used more than this share "
        "of the machine during it",
    )
    p.add_argument(
        "--redo", type=int, default=2, help="redo a contended round up to this many times"
    )
    p.add_argument(
        "--max-load",
        type=float,
        default=1.0,
        help="before starting, wait (up to --load-wait s) for the load to fall to this",
    )
    p.add_argument("--load-wait", type=float, default=0.0, help="(default 0: do not wait)")
    p.add_argument(
        "--profile", default="", help="systems to profile (cProfile top entries after the rounds)"
    )
    p.add_argument("--list", action="store_true", help="list workloads and systems, then exit")
    return p, p.parse_args(argv)


def main(argv=None) -> int:
    """Run the benchmarks; returns 1 if a system disagreed or failed, else 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, args = parse(argv)
    if args.list:
        for w in WORKLOADS.values():
            print(f"{w.name:10} {w.title}\n{'':10} systems: {', '.join(w.systems())}")
        return 0
    names = [n for item in args.only or [",".join(WORKLOADS)] for n in item.split(",") if n]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    wanted = [s for s in (args.systems or ",".join(SYSTEMS)).split(",") if s]
    if set(wanted) - set(SYSTEMS):
        parser.error(f"unknown systems {sorted(set(wanted) - set(SYSTEMS))}; known: {SYSTEMS}")
    args.profile = [s for s in args.profile.split(",") if s]
    skipped = [s for s in wanted if not _installed(s)]
    if args.device == "gpu":
        skipped += [s for s in wanted if s not in GPU_SYSTEMS and s not in skipped]
    systems = [s for s in SYSTEMS if s in wanted and s not in skipped]

    waited = wait_for_load(args.max_load, args.load_wait) if args.load_wait > 0 else 0.0
    info = machine_info(args, argv)
    info["waited_for_load_s"] = waited
    out = header(info)
    if skipped:
        out.append(
            f"- skipped (not installed{' or CPU only' if args.device == 'gpu' else ''}): "
            f"{', '.join(skipped)}"
        )
    print("\n".join(out), flush=True)
    results, sections, bad = {}, [], False
    for name in names:
        workload = WORKLOADS[name]
        use = [s for s in systems if s in workload.systems()]
        result = run_workload(workload, use, args)
        summary = summarise(workload, result, args)
        result["summary"] = summary
        results[name] = result
        bad |= bool(result["failed"] or result["disagree"])
        section = table(workload, result, summary)
        sections += [""] + section
        print("\n" + "\n".join(section), flush=True)
        for s, info_s in result.get("systems", {}).items():
            if "profile" in info_s:
                print(
                    f"\ncProfile of {s} on {name} (top entries by own time):\n{info_s['profile']}",
                    flush=True,
                )
    info["loadavg_end"] = os.getloadavg()
    seen = {}
    for result in results.values():
        for s, v in result.get("systems", {}).items():
            seen.setdefault(s, (v["version"], v["threads"]))
    footer = ["", "Systems (version; threads as each process reports them):", ""]
    footer += [f"- {s}: {v}; {t}" for s, (v, t) in seen.items()]
    footer.append(
        "- 1-min load average at the end: " + " / ".join(f"{x:.2f}" for x in info["loadavg_end"])
    )
    print("\n".join(footer), flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"info": info, "results": results, "markdown": out + sections + footer},
                indent=1,
                default=str,
            )
            + "\n"
        )
        print(f"raw results written to {args.json}")
    if bad:
        print("some systems failed or disagreed (see above)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
