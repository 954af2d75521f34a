"""Runs `lopt-evaluate` from a source checkout: `python scripts/evaluate.py --help`."""

import sys

from meta_train.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
