"""The ``nnflow`` console script (``pyproject.toml``) and ``python -m nnflow``: a thin entry
point over ``nnflow.train.cli``, where the commands live.

>>> callable(main) and callable(run_script)
True
"""

from __future__ import annotations

import sys

from .train.cli import main as _main
from .train.cli import run_script

__all__ = ["main", "run_script"]


def main(argv: list[str] | None = None) -> int:
    """Run ``nnflow COMMAND ...``; returns the exit status (also used by ``sys.exit``)."""
    return _main(argv if argv is not None else sys.argv[1:])
