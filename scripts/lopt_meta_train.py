"""Runs `lopt-meta-train` from a source checkout: `python scripts/lopt_meta_train.py --help`."""

import sys

from meta_train.cli import meta_train_main

if __name__ == "__main__":
    sys.exit(meta_train_main())
