"""Entry point of ``python -m fl`` (see :mod:`fl.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
