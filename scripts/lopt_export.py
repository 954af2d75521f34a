"""Runs `lopt-export` from a source checkout: `python scripts/lopt_export.py --help`."""

import sys

from meta_train.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
