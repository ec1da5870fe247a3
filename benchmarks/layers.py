"""The layers issue's benchmarks (ConvNet step, LSTM BPTT): a thin wrapper of the runner.

Run from the repository root, with the OpenBLAS variables of the shared machine unset::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/layers.py

which is ``python -m benchmarks --only conv,lstm`` (see ``benchmarks/run.py`` for the method):

* ``conv`` (``benchmarks/workloads/conv.py``): batch 64 of 1x28x28 -> Conv2d 3x3 16 -> relu ->
  Conv2d 3x3 32 -> relu -> MaxPool2d 2 -> Flatten -> Linear 4608 -> 10, cross-entropy,
  gradients and an in-place SGD update, float32; target: ``nnflow-compiled`` <= 1.5x ``torch``;
* ``lstm`` (``benchmarks/workloads/lstm.py``): LSTM(64 -> 128) over a sequence of 50, batch 32,
  MSE of all outputs, parameter gradients (BPTT), float32; target: ``nnflow-compiled`` <= 1.2x
  ``torch``.

Options of this wrapper: ``--workloads conv,lstm`` (which of the two). Every other option goes
to the runner (``python -m benchmarks --help``): ``--systems``, ``--repeat``, ``--threads``,
``--tiny``, ``--json``, ``--profile nnflow-compiled`` (where the step's time goes), ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: import this checkout's benchmarks and nnflow
    sys.path.insert(0, str(ROOT))

from benchmarks import run  # noqa: E402

WORKLOADS = ("conv", "lstm")


def runner_arguments(argv: list[str]) -> list[str]:
    """The runner's command line for this wrapper's ``argv``.

    >>> runner_arguments(["--workloads", "lstm", "--repeat", "3"])
    ['--only', 'lstm', '--repeat', '3']
    """
    parser = argparse.ArgumentParser(
        prog="benchmarks/layers.py",
        description=__doc__.split("\n")[0],
        epilog="Other options go to the runner: python -m benchmarks --help",
        allow_abbrev=False,
    )
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="conv, lstm or both")
    args, rest = parser.parse_known_args(argv)
    names = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    return ["--only", ",".join(names)] + rest


def main(argv: list[str] | None = None) -> int:
    """Run the runner's conv and LSTM workloads; its exit status."""
    return run.main(runner_arguments(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
