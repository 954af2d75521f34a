"""Runs `lopt-import` from a source checkout: `python scripts/lopt_import.py --help`."""

import sys

from lopt.published import main

if __name__ == "__main__":
    sys.exit(main())
