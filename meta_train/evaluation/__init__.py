"""Judging optimizers: training curves on held-out tasks, per-task learning-rate tuning, the one speedup
definition, summaries and plots, named tasks and suites, and the `lopt-evaluate` command.

Meta-training reaches into this package through one call only, `report.evaluate_run` (the end-of-run
report); nothing here imports the meta-training loop.
"""
