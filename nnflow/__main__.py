"""``python -m nnflow``: the same as the ``nnflow`` command."""

import sys

from .cli import main

sys.exit(main())
