"""``python -m simtorch``: the ``simtorch`` command line (see :mod:`simtorch.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
