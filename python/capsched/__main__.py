"""``python -m capsched``: the :mod:`capsched.cli` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
