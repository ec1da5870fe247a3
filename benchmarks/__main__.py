"""``python -m benchmarks``: the side-by-side runner (see ``benchmarks/run.py``)."""

import sys

from benchmarks.run import main

sys.exit(main())
