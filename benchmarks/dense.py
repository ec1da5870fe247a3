"""The compiled-tapes issue's dense benchmark: a thin wrapper of the side-by-side runner.

Run from the repository root, with the OpenBLAS variables of the shared machine unset::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/dense.py

which is ``python -m benchmarks --only dense-f64,dense-f32,chain`` (see ``benchmarks/run.py``
for the method): the survey's dense layer, ``W`` 512x256, ``b`` 512, ``x`` 256x4096, loss
``sum(exp(W @ x + b[:, None]))``, gradients w.r.t. ``W`` and ``b``, in float64 and float32
(``benchmarks/workloads/dense.py``), then the 50-op elementwise chain of
``benchmarks/overhead.py`` (``benchmarks/workloads/chain.py``). Under each dense table the runner
reports the issue's three targets: ``nnflow-compiled`` (``ad.compile_grad``) <= 1.05x
``numpy-best`` (the best hand-written in-place NumPy), ``nnflow-eager`` (``ad.grad``) <= 1.3x
``numpy-naive`` (hand-written, allocating), and ``nnflow-compiled`` allocating < 64 KiB of NumPy
memory per call.

Options of this wrapper: ``--dtypes float64,float32`` (which dense workloads), ``--skip-chain``
and ``--no-peers`` (hand-written NumPy and nnflow only: no torch, JAX or autograd). Every other
option goes to the runner (``python -m benchmarks --help``): ``--repeat``, ``--tiny``,
``--json``, ``--round-time``, ``--max-wait``, ... ``--profile nnflow-compiled,nnflow-eager``
shows where a step's time goes (cProfile's top entries by own time: the NumPy calls).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: import this checkout's benchmarks and nnflow
    sys.path.insert(0, str(ROOT))

from benchmarks import run  # noqa: E402

WORKLOADS = {"float64": "dense-f64", "float32": "dense-f32"}
NUMPY_AND_NNFLOW = "numpy-naive,numpy-best,nnflow-eager,nnflow-compiled"


def runner_arguments(argv: list[str]) -> list[str]:
    """The runner's command line for this wrapper's ``argv``.

    >>> runner_arguments(["--dtypes", "float32", "--skip-chain", "--repeat", "3"])
    ['--only', 'dense-f32', '--repeat', '3']
    """
    parser = argparse.ArgumentParser(
        prog="benchmarks/dense.py",
        description=__doc__.split("\n")[0],
        epilog="Other options go to the runner: python -m benchmarks --help",
        allow_abbrev=False,
    )
    parser.add_argument("--dtypes", default="float64,float32", help="dense float types")
    parser.add_argument("--skip-chain", action="store_true", help="no 50-op chain")
    parser.add_argument("--no-peers", action="store_true", help="NumPy and nnflow only")
    args, rest = parser.parse_known_args(argv)
    unknown = [d for d in args.dtypes.split(",") if d not in WORKLOADS]
    if unknown:
        parser.error(f"unknown dtypes {unknown}; known: {', '.join(WORKLOADS)}")
    only = [WORKLOADS[d] for d in args.dtypes.split(",")] + ([] if args.skip_chain else ["chain"])
    out = ["--only", ",".join(only)]
    if args.no_peers:
        out += ["--systems", NUMPY_AND_NNFLOW]
    return out + rest


def main(argv: list[str] | None = None) -> int:
    """Run the runner's dense workloads (and the chain); its exit status."""
    return run.main(runner_arguments(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
