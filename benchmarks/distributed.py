"""Data-parallel scaling (issue 9): an MLP epoch on 1 and 2 MPI ranks, and the allreduce share.

Two MLPs, in three configurations, train on the shipped digits (1442 training images, float32,
AdamW) with the same *global* batch in every row, so that every row computes the same training
(strong scaling):

* ``example`` -- the model of ``examples/mlp.py`` without dropout, 64-128-10 (9.6K parameters),
  global batch 64 (23 steps an epoch);
* ``wide-128`` and ``wide-512`` -- 64-1024-1024-10 (1.1M parameters, 4.5 MB of float32
  gradients), global batch 128 (12 steps an epoch) or 512 (3 steps, the last of 418 samples).
  Each rank runs the whole optimizer step (AdamW over 1.1M parameters, about 7-10 ms here)
  whatever its batch, so only the larger batch leaves enough divisible work to scale.

Rows: ``1 proc x 1 thread`` and ``1 proc x 2 threads`` (plain ``Trainer``, BLAS threads as
given), ``mpirun -n 1`` and ``mpirun -n 2`` (``Trainer(distributed=True)``, one BLAS thread per
rank, so 2 ranks use the machine's 2 cores). Each run trains 1 warm-up epoch (tracing and
compiling) and then ``--epochs`` timed epochs; its figure is the median epoch. Runs of all rows
take turns, ``--rounds`` times, and the table gives the median over rounds (min-max).

Allreduce columns (distributed rows): ``allreduce/step`` is the time a step spends in the
gradient allreduce, waiting for the slower rank included, from ``DataParallel.stats``;
``share`` is its fraction of the step time; ``bare`` times the same buffers' allreduce alone,
after a barrier (the cost of moving the data, without any imbalance). The final losses of every
row are compared (they train the same model on the same batches) before anything is printed.

    python benchmarks/distributed.py            # needs mpirun and mpi4py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "example": ((64, 128, 10), 64),
    "wide-128": ((64, 1024, 1024, 10), 128),
    "wide-512": ((64, 1024, 1024, 10), 512),
}
ROWS = ("1 proc x 1 thread", "1 proc x 2 threads", "mpirun -n 1", "mpirun -n 2")


# -- one run (a worker process) -------------------------------------------------------------------
def worker(config: str, epochs: int, distributed: bool) -> dict:
    from nnflow import losses
    from nnflow.data import DataLoader, digits
    from nnflow.layers import Chain, Flatten, Linear
    from nnflow.optim import AdamW
    from nnflow.train import Callback, Trainer

    sizes, global_batch = CONFIGS[config]
    layers = [Flatten()]
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        last = i == len(sizes) - 2
        layers.append(Linear(n_in, n_out, activation=None if last else "relu", rng=i))
    model = Chain(*layers)

    def loss(model, batch):
        x, y = batch
        return losses.cross_entropy(model(x), y)

    trainer = Trainer(
        model,
        loss,
        AdamW(model, lr=1e-3),
        progress=False,
        distributed=distributed,
    )
    world = trainer.dist.size if trainer.dist else 1
    train = DataLoader(digits("train"), global_batch // world, seed=0)

    class Clock(Callback):
        def __init__(self):
            self.epochs = []

        def on_epoch_start(self, trainer):
            stats = trainer.dist.stats if trainer.dist else {}
            self.start = (
                time.perf_counter(),
                stats.get("allreduce_seconds", 0.0),
                time.process_time(),
            )

        def on_epoch_end(self, trainer, logs):
            stats = trainer.dist.stats if trainer.dist else {}
            wall, comm, cpu = self.start
            self.epochs.append(
                (
                    time.perf_counter() - wall,
                    stats.get("allreduce_seconds", 0.0) - comm,
                    time.process_time() - cpu,
                )
            )

    clock = Clock()
    history = trainer.fit(train, 1 + epochs, callbacks=[clock])
    timed = clock.epochs[1:]  # the first epoch traces and compiles
    steps = len(train.shard(0, world)) if trainer.dist else len(train)
    result = {
        "epoch_s": statistics.median(t for t, _, _ in timed),
        "allreduce_s": statistics.median(c for _, c, _ in timed),
        "cpu_share": sum(c for _, _, c in timed) / sum(t for t, _, _ in timed),
        "steps": steps,
        "loss": history[-1]["loss"],
        "world": world,
    }
    if trainer.dist is not None:  # the bare allreduce of the gradient buffers
        dist, times = trainer.dist, []
        layout = dist._layout
        for _ in range(30):
            dist.barrier()
            start = time.perf_counter()
            dist.data.allreduce(layout.buffers, "the bare allreduce")
            times.append(time.perf_counter() - start)
        result["bare_s"] = statistics.median(times)
        result["grad_bytes"] = sum(int(b.nbytes) for b in layout.buffers)
        result["buffers"] = len(layout.buffers)
        if dist.rank != 0:
            return {}
    return result


# -- the driver -----------------------------------------------------------------------------------
def mpirun_command(ranks: int, extra: str) -> list[str]:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        sys.exit("benchmarks/distributed.py needs mpirun (apt-get install openmpi-bin)")
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
    root = ["--allow-run-as-root", "--oversubscribe"] if "Open MPI" in version else []
    return [mpirun, "-n", str(ranks), *root, *extra.split()]


def run_row(row: str, config: str, epochs: int, extra: str = "") -> dict:
    threads = "2" if row == "1 proc x 2 threads" else "1"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    args = [sys.executable, __file__, "--worker", config, "--epochs", str(epochs)]
    if row.startswith("mpirun"):
        args = [*mpirun_command(int(row[-1]), extra), *args, "--distributed"]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        sys.exit(f"{row} / {config} failed:\n{proc.stdout}\n{proc.stderr}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[0][len("RESULT ") :])


def runnable() -> int:
    """Runnable tasks right now (the 4th field of /proc/loadavg, this reader included)."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return 1


def wait_for_quiet(max_wait: float, settle: int = 5) -> float:
    """Wait (at most ``max_wait`` s) until no other task is runnable for ``settle`` polls."""
    start, quiet = time.perf_counter(), 0
    while quiet < settle and time.perf_counter() - start < max_wait:
        quiet = quiet + 1 if runnable() <= 1 else 0
        time.sleep(0.1)
    return time.perf_counter() - start


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of every row (default 5)")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs a run (default 5)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--mpirun-args", default="", help="more mpirun options, one string")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument(
        "--max-wait", type=float, default=30.0, help="s to wait for other jobs before a run"
    )
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args.epochs, args.distributed)
        if result:
            print("RESULT " + json.dumps(result), flush=True)
        return

    print(f"load average at start: {load_average()}")
    chosen = [row for row in ROWS if row in args.rows]
    raw: dict = {config: {row: [] for row in chosen} for config in args.configs}
    waited = 0.0
    for r in range(args.rounds):
        for config in args.configs:
            for row in chosen[r % len(chosen) :] + chosen[: r % len(chosen)]:  # order rotates
                waited += wait_for_quiet(args.max_wait) if args.max_wait > 0 else 0.0
                raw[config][row].append(run_row(row, config, args.epochs, args.mpirun_args))
    shares = [run["cpu_share"] for rows in raw.values() for runs in rows.values() for run in runs]
    print(f"load average at end: {load_average()}; waited {waited:.0f} s for other jobs")
    print(f"CPU share of rank 0 during timed epochs: min {min(shares):.2f}, ", end="")
    print(f"median {statistics.median(shares):.2f} (1 thread: below 0.9 means contention)\n")
    for config, rows in raw.items():
        losses = [run["loss"] for runs in rows.values() for run in runs]
        if not np.allclose(losses, losses[0], rtol=1e-4):
            sys.exit(f"{config}: the rows disagree on the final loss: {losses}")
    print(
        f"| model | run | epoch ms (min-max) | × {chosen[0]} | step ms | allreduce/step ms |"
        " share | bare allreduce ms |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for config, rows in raw.items():
        base = statistics.median(run["epoch_s"] for run in rows[chosen[0]])
        for row, runs in rows.items():
            epoch = [run["epoch_s"] for run in runs]
            med, steps = statistics.median(epoch), runs[0]["steps"]
            cells = [
                config,
                row,
                f"{med * 1e3:.1f} ({min(epoch) * 1e3:.1f}-{max(epoch) * 1e3:.1f})",
                f"{base / med:.2f}",
                f"{med / steps * 1e3:.2f}",
            ]
            if "bare_s" in runs[0]:
                comm = statistics.median(run["allreduce_s"] for run in runs) / steps
                bare = statistics.median(run["bare_s"] for run in runs)
                cells += [f"{comm * 1e3:.3f}", f"{comm / (med / steps):.1%}", f"{bare * 1e3:.3f}"]
            else:
                cells += ["-", "-", "-"]
            print("| " + " | ".join(cells) + " |")
        runs = [runs[0] for runs in rows.values()]
        dist = next((run for run in runs if "grad_bytes" in run), None)
        size = (
            f", {dist['grad_bytes'] / 1e6:.2f} MB of gradients in {dist['buffers']} flat buffer(s)"
            if dist
            else ""
        )
        print(f"\n{config}{size}; final losses agree ({runs[0]['loss']:.6f})\n")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
